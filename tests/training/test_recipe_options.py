"""Winners' recipe options on CPU with tiny real timm models: eval size, SRM input, EMA, JPEG
strength."""

from __future__ import annotations

import optuna
import pytest
import timm
import torch

from ffdi_tune.config import parse_search_config
from ffdi_tune.data.augment import AugmentParams, build_augment
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.models.srm import SRM_KERNELS, SrmInput
from ffdi_tune.scoring.metrics import binary_metrics
from ffdi_tune.scoring.predict import load_member, predict_views
from ffdi_tune.search.space import DefineByRun, trial_settings
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import BEST_FILE, LAST_FILE, train_trial


def train(data, **settings):
    """One epoch; returns (reported metrics, best.pt, last.pt) of it."""
    out = []

    def report(metrics, folder):
        out.append(
            (
                metrics,
                torch.load(folder / BEST_FILE, weights_only=True),
                torch.load(folder / LAST_FILE, weights_only=True),
            )
        )

    s = TrainSettings(
        **{"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "epochs": 1, **settings}
    )
    train_trial(s, DataConfig(root=str(data)), report)
    return out[-1]


def val_loss_of(model, ckpt, data, size):
    val = read_split(DataConfig(root=str(data)), "val")
    prob = predict_views_plain(model, load_images(val, size), ckpt)
    return binary_metrics(val.targets, prob)["val_loss"]


def predict_views_plain(model, images, ckpt):
    from ffdi_tune.scoring.inference import view_log_odds

    return view_log_odds(
        model, images, torch.tensor(ckpt["mean"]), torch.tensor(ckpt["std"]), ["identity"]
    )[0]


def test_eval_img_size_is_recorded_and_used_for_prediction(tiny_data, tmp_path):
    metrics, best, _ = train(tiny_data, eval_img_size=48)
    assert best["img_size"] == 32 and best["eval_img_size"] == 48
    torch.save(best, tmp_path / "best.pt")
    member = load_member(tmp_path / "best.pt", "m", torch.device("cpu"))
    assert member.img_size == 48
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    prob = predict_views(member, load_images(val, member.img_size), ["identity"])[0]
    # the reported validation ran at 48 px: the member reproduces it there, and not at 32 px
    assert binary_metrics(val.targets, prob)["val_loss"] == pytest.approx(
        metrics["val_loss"], rel=1e-6
    )
    assert val_loss_of(member.model, best, tiny_data, 32) != pytest.approx(
        metrics["val_loss"], rel=1e-6
    )
    # without the key, evaluation runs at the training size
    _, plain, _ = train(tiny_data)
    assert plain["eval_img_size"] == 32


def test_srm_adapter_starts_as_identity_and_kernels_are_high_pass():
    assert torch.allclose(SRM_KERNELS.sum((1, 2)), torch.zeros(3), atol=1e-6)
    backbone = timm.create_model("test_resnet", num_classes=2).eval()
    wrapped = SrmInput(backbone).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(wrapped(x), backbone(x), atol=1e-6)
    # a flat image has no residual; a checkerboard has a strong one
    assert wrapped.residuals(torch.full((1, 3, 16, 16), 0.7))[..., 2:-2, 2:-2].abs().max() < 1e-5
    board = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2).float().expand(1, 3, 16, 16)
    assert wrapped.residuals(board)[..., 2:-2, 2:-2].abs().mean() > 1


def test_srm_input_trains_and_its_checkpoint_rebuilds_the_model(tiny_data, tmp_path):
    metrics, best, _ = train(tiny_data, input="rgb+srm", backbone="resnet10t")
    assert best["input"] == "rgb+srm" and any(k.startswith("adapter.") for k in best["state_dict"])
    # training moved the adapter off the identity, towards the residual channels
    assert best["state_dict"]["adapter.weight"][:, 3:].abs().sum() > 0
    torch.save(best, tmp_path / "best.pt")
    member = load_member(tmp_path / "best.pt", "m", torch.device("cpu"))  # weights_only=True inside
    assert isinstance(member.model, SrmInput)
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    prob = predict_views(member, load_images(val, 32), ["identity"])[0]
    assert binary_metrics(val.targets, prob)["val_loss"] == pytest.approx(
        metrics["val_loss"], rel=1e-6
    )


def test_ema_weights_are_evaluated_and_saved(tiny_data):
    metrics, best, last = train(tiny_data, ema_decay=0.5)
    ema_state = {k.removeprefix("module."): v for k, v in last["ema"].items()}
    assert best["state_dict"].keys() == last["model"].keys()
    for k, v in best["state_dict"].items():
        assert torch.equal(v, ema_state[k])
    assert any(
        not torch.equal(v, last["model"][k])
        for k, v in best["state_dict"].items()
        if v.is_floating_point()
    )
    # the reported metrics come from the EMA weights, not from the trained ones
    ema_model = timm.create_model("test_resnet", num_classes=2)
    ema_model.load_state_dict(best["state_dict"])
    raw_model = timm.create_model("test_resnet", num_classes=2)
    raw_model.load_state_dict(last["model"])
    assert val_loss_of(ema_model, best, tiny_data, 32) == pytest.approx(
        metrics["val_loss"], rel=1e-6
    )
    assert val_loss_of(raw_model, best, tiny_data, 32) != pytest.approx(
        metrics["val_loss"], rel=1e-6
    )


@pytest.fixture(scope="module")
def image(tiny_data):
    return load_images(read_split(DataConfig(root=str(tiny_data)), "train"), 32)[0]


def test_jpeg_strength_follows_the_settings(image):
    torch.manual_seed(0)
    off = build_augment("jpeg", 32, params=AugmentParams(jpeg_p=0.0))
    assert all(
        torch.equal(o, image) or torch.equal(o, image.flip(-1))
        for o in (off(image) for _ in range(10))
    )
    hard = build_augment("jpeg", 32, params=AugmentParams(jpeg_quality=(5, 5), jpeg_p=1.0))
    light = build_augment("jpeg", 32, params=AugmentParams(jpeg_quality=(100, 100), jpeg_p=1.0))

    def err(t):
        o = t(image)
        o = (
            o
            if (o.int() - image.int()).abs().sum() < (o.int() - image.flip(-1).int()).abs().sum()
            else o.flip(-1)
        )
        return (o.int() - image.int()).abs().float().mean().item()

    assert err(hard) > 3 * err(light) and err(hard) > 2
    # user sets that name the jpeg set get the same strength
    user = build_augment("mine", 32, {"mine": [{"name": "jpeg"}]}, params=AugmentParams(jpeg_p=0.0))
    assert all(
        torch.equal(o, image) or torch.equal(o, image.flip(-1))
        for o in (user(image) for _ in range(10))
    )


def test_jpeg_keys_are_searchable_and_train(tiny_data):
    cfg = parse_search_config(
        {
            "name": "j",
            "data": {"root": str(tiny_data)},
            "train": {"augment": "jpeg"},
            "space": {
                "jpeg_quality": {"choice": [[20, 40], [70, 95]]},
                "jpeg_p": {"uniform": [0.2, 0.9]},
            },
        }
    )
    fn = DefineByRun.from_config(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        fn(trial)
        s = trial_settings(cfg.train, trial.params)
        assert s.jpeg_quality in ((20, 40), (70, 95)) and 0.2 <= s.jpeg_p <= 0.9
        seen.add(s.jpeg_quality)
        study.tell(trial, 0.5)
    assert len(seen) == 2
    metrics, best, _ = train(tiny_data, augment="jpeg", jpeg_quality=(20, 40), jpeg_p=1.0)
    assert best["settings"]["jpeg_quality"] == (20, 40) and best["metrics"] == metrics


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"jpeg_quality": [50, 20]}, "jpeg_quality must be"),
        ({"jpeg_quality": [0, 20]}, "jpeg_quality must be"),
        ({"jpeg_p": 1.5}, "jpeg_p"),
        ({"input": "srm"}, "input"),
        ({"eval_img_size": 8}, "eval_img_size"),
    ],
)
def test_bad_recipe_option_values(bad, message):
    from ffdi_tune.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_search_config({"name": "b", "data": {"root": "/d"}, "train": bad}, "x.yaml")
