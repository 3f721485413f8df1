"""The robust valset: fixed, seeded perturbations of real JPEGs, cached once, scored every epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from ffdi_tune.config import parse_search_config
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.perturb import PERTURB_KINDS, Perturber, RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import ConfigError
from ffdi_tune.scoring.epoch_metrics import epoch_metric_names
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import train_trial


@pytest.fixture(scope="module")
def val(tiny_data):
    return read_split(DataConfig(root=str(tiny_data)), "val")


def npy_files(folder):
    return sorted(p for p in folder.iterdir() if p.suffix == ".npy") if folder.exists() else []


def test_same_recipe_same_pixels_and_differs_from_clean(val):
    a = load_images(val, 32, perturb=Perturber(RobustValConfig(seed=7)))
    b = load_images(val, 32, perturb=Perturber(RobustValConfig(seed=7)))
    clean = load_images(val, 32)
    other = load_images(val, 32, perturb=Perturber(RobustValConfig(seed=8)))
    assert torch.equal(a, b)
    # every image carries at least one perturbation, so every image changes
    changed = [(a[i].int() - clean[i].int()).abs().float().mean() > 0.5 for i in range(len(val))]
    assert all(changed)
    assert not torch.equal(a, other)


def test_plan_follows_the_recipe():
    only_jpeg = RobustValConfig(
        ops_per_image=(2, 2),
        kinds={
            "jpeg": {"quality": [40, 41]},
            "blur": None,
            "rescale": None,
            "color": None,
            "crop": None,
        },
    )
    plans = [Perturber(only_jpeg).plan(f"{i}.jpg") for i in range(20)]
    # two ops asked, one kind on: one op, always within the quality range
    assert all(len(p) == 1 and p[0][0] == "jpeg" and p[0][1]["quality"] in (40, 41) for p in plans)
    default = Perturber(RobustValConfig())
    counts = [len(default.plan(f"{i}.jpg")) for i in range(200)]
    assert set(counts) == {1, 2}
    kinds = {k for i in range(200) for k, _ in default.plan(f"{i}.jpg")}
    assert kinds == set(PERTURB_KINDS)
    # kinds are applied in the fixed order (a re-encode last)
    for i in range(50):
        order = [PERTURB_KINDS.index(k) for k, _ in default.plan(f"{i}.jpg")]
        assert order == sorted(order)


def test_perturbed_set_is_cached_once_per_recipe(val, tmp_path):
    cache = tmp_path / "cache"
    load_images(val, 32, cache_dir=cache)
    assert len(npy_files(cache)) == 1
    first = load_images(val, 32, cache_dir=cache, perturb=Perturber(RobustValConfig()))
    files = npy_files(cache)
    assert len(files) == 2
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = load_images(val, 32, cache_dir=cache, perturb=Perturber(RobustValConfig()))
    assert torch.equal(first, again)
    assert {p: p.stat().st_mtime_ns for p in npy_files(cache)} == stamps  # read, not rebuilt
    # the cached copy is exactly the uncached one
    assert torch.equal(first, load_images(val, 32, perturb=Perturber(RobustValConfig())))
    # another recipe (even one range) is another entry; the on/off switch is not part of the key
    load_images(
        val,
        32,
        cache_dir=cache,
        perturb=Perturber(RobustValConfig(kinds={"jpeg": {"quality": [10, 20]}})),
    )
    assert len(npy_files(cache)) == 3
    assert Perturber(RobustValConfig(enabled=False)).key == Perturber(RobustValConfig()).key


def test_recipe_is_in_the_resolved_config():
    raw = {
        "name": "r",
        "data": {"root": "/d"},
        "robust_val": {
            "seed": 4,
            "ops_per_image": [1, 1],
            "kinds": {"blur": None, "jpeg": {"quality": [35, 45]}},
        },
    }
    cfg = parse_search_config(raw)
    # what the search logs on its parent run as search_space.yaml
    resolved = yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    logged = resolved["robust_val"]
    assert (
        logged["seed"] == 4
        and logged["kinds"]["jpeg"]["quality"] == [35, 45]
        and logged["kinds"]["blur"] is None
    )
    assert logged["kinds"]["crop"]["keep"] == [0.85, 0.97]  # defaults are written out too
    again = parse_search_config(resolved)
    assert Perturber(again.robust_val).key == Perturber(cfg.robust_val).key


def test_tiny_training_reports_the_three_metrics(tiny_data):
    import timm

    from ffdi_tune.scoring.inference import view_log_odds
    from ffdi_tune.scoring.metrics import roc_auc
    from ffdi_tune.training.trial import BEST_FILE

    reports = []
    s = TrainSettings(backbone="test_resnet", img_size=32, batch_size=8, epochs=1)
    best = train_trial(
        s,
        DataConfig(root=str(tiny_data)),
        lambda m, f: reports.append((m, torch.load(f / BEST_FILE, weights_only=True))),
        metric="val_worst_auc",
        robust_val=RobustValConfig(),
    )
    m, ckpt = reports[0]
    assert {"val_auc", "val_robust_auc", "val_worst_auc"} <= set(m)
    assert "val_robust_auc" in epoch_metric_names()
    assert m["val_worst_auc"] == min(m["val_auc"], m["val_robust_auc"])
    assert best == {k: v for k, v in m.items() if k != "weights_kept"}
    # val_robust_auc: the checkpoint's AUC on the perturbed copy of valset, decoded like the clean
    model = timm.create_model("test_resnet", num_classes=2)
    model.load_state_dict(ckpt["state_dict"])
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    perturbed = load_images(val, 32, perturb=Perturber(RobustValConfig()))
    score = view_log_odds(
        model, perturbed, torch.tensor(ckpt["mean"]), torch.tensor(ckpt["std"]), ["identity"]
    )[0]
    assert roc_auc(val.targets, score) == pytest.approx(m["val_robust_auc"])
    # switched off, the robust metrics are absent and cannot be the metric
    plain = []
    train_trial(
        s,
        DataConfig(root=str(tiny_data)),
        lambda m, f: plain.append(m),
        robust_val=RobustValConfig(enabled=False),
    )
    assert "val_robust_auc" not in plain[0] and plain[0]["val_auc"] == pytest.approx(m["val_auc"])
    with pytest.raises(ConfigError, match="robust_val"):
        train_trial(
            s,
            DataConfig(root=str(tiny_data)),
            lambda m, f: None,
            metric="val_robust_auc",
            robust_val=None,
        )


def parse(**sections):
    return parse_search_config({"name": "t", "data": {"root": "/d"}, **sections}, source="x.yaml")


@pytest.mark.parametrize("metric", ["val_robust_auc", "val_worst_auc"])
def test_search_metric_accepts_robust_names(metric):
    cfg = parse(search={"metric": metric})
    assert cfg.search.metric == metric and cfg.search.mode == "max"


def test_search_metric_errors():
    with pytest.raises(
        ConfigError, match=r"unknown metric 'val_robst_auc' \(did you mean 'val_robust_auc'"
    ):
        parse(search={"metric": "val_robst_auc"})
    with pytest.raises(
        ConfigError, match="robust_val.enabled is false; set robust_val.enabled: true"
    ):
        parse(search={"metric": "val_worst_auc"}, robust_val={"enabled": False})


@pytest.mark.parametrize(
    "robust_val,message",
    [
        ({"kinds": {"jpg": {}}}, r"robust_val.kinds: unknown key 'jpg' \(did you mean 'jpeg'"),
        (
            {"kinds": {"jpeg": {"quality": [80, 20]}}},
            r"robust_val.kinds.jpeg.quality: .*low <= high .*got \[80, 20\]",
        ),
        ({"ops_per_image": [0, 2]}, r"robust_val.ops_per_image: "),
        ({"kinds": {k: None for k in PERTURB_KINDS}}, "keep at least one or set enabled: false"),
    ],
)
def test_bad_recipes_are_one_line_errors(robust_val, message):
    with pytest.raises(ConfigError, match=message) as exc:
        parse(robust_val=robust_val)
    assert "\n" not in str(exc.value)


def test_perturbation_leaves_the_source_unchanged(val):
    from PIL import Image

    with Image.open(val.paths[0]) as im:
        src = im.convert("RGB")
    before = np.asarray(src).copy()
    Perturber(RobustValConfig())(src, val.names[0])
    assert np.array_equal(np.asarray(src), before)


def _only(**kinds) -> RobustValConfig:
    off = {k: None for k in PERTURB_KINDS}
    return RobustValConfig(ops_per_image=(1, 1), kinds={**off, **kinds})


def test_perturbed_copy_is_decoded_like_the_clean_one(tiny_data):
    """A no-op perturbation (a crop keeping the whole frame) gives exactly the clean pixels."""
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    clean = load_images(val, 32)
    unchanged = load_images(val, 32, perturb=Perturber(_only(crop={"keep": [1.0, 1.0]})))
    assert torch.equal(clean, unchanged)


def test_perturbation_strength_acts_at_the_trial_size(tiny_data):
    """The blur's sigma is in pixels of the image the model sees: blur(clean at img_size)."""
    from PIL import Image, ImageFilter

    recipe = _only(blur={"sigma": [1.0, 1.2]})
    perturber = Perturber(recipe)
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    for size in (32, 48):
        clean = load_images(val, size)[0].permute(1, 2, 0).numpy()
        ((kind, params),) = perturber.plan(val.names[0])
        expected = np.asarray(
            Image.fromarray(clean).filter(ImageFilter.GaussianBlur(params["sigma"]))
        )
        got = load_images(val, size, perturb=perturber)[0].permute(1, 2, 0).numpy()
        assert kind == "blur" and np.array_equal(got, expected)
