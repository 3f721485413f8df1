"""One trial's training on real JPEGs with real tiny timm models, no Ray or MLflow."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import train_collecting

from ffdi_tune.data.settings import DataConfig
from ffdi_tune.scoring.epoch_metrics import epoch_metric_names
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import train_trial


@pytest.mark.parametrize(
    "backbone,extra",
    [
        (
            "resnet10t",
            {
                "mix": "mixup_or_cutmix",
                "ema_decay": 0.9,
                "label_smoothing": 0.1,
                "augment": "flips+jpeg",
            },
        ),
        ("mobilenetv3_small_050", {"optimizer": "sgd", "augment": "randaugment"}),
    ],
)
def test_epochs_report_metrics_and_checkpoints(tiny_data, backbone, extra):
    s = TrainSettings(
        backbone=backbone,
        img_size=32,
        batch_size=8,
        epochs=2,
        lr=3e-3,
        step_size=1,
        gamma=0.5,
        **extra,
    )
    best, reports = train_collecting(s, tiny_data)
    assert [m["epoch"] for m, _, _ in reports] == [1, 2]
    for i, (m, b, last) in enumerate(reports):
        # every registered metric but the peak accelerator memory, which a GPU alone reports, and
        # the kinds of weights that exist only with ema_decay or swa_epochs
        kinds = {f"val_auc_{kind}" for kind in ("raw", "ema", "swa")}
        assert set(epoch_metric_names()) - {"peak_accelerator_memory_mb"} - kinds <= set(m)
        assert ({"val_auc_raw", "val_auc_ema"} <= set(m)) == ("ema_decay" in extra)
        assert 0 < m["data_wait_share"] < 1 and m["eval_time_s"] < m["epoch_time_s"]
        assert (
            np.isfinite(m["train_loss"])
            and m["train_images_per_s"] > 0
            and last["epoch"] == m["epoch"]
        )
        # the best so far
        assert b["metrics"]["val_auc"] == max(r[0]["val_auc"] for r in reports[: i + 1])
        assert b["backbone"] == backbone and b["img_size"] == 32 and len(b["mean"]) == 3
    # StepLR steps after each epoch: epoch 2 trains at lr * gamma
    assert reports[0][0]["lr"] == pytest.approx(3e-3) and reports[1][0]["lr"] == pytest.approx(
        1.5e-3
    )
    # best.pt holds the best epoch by val_auc
    best_epoch = max(reports, key=lambda r: r[0]["val_auc"])[0]["epoch"]
    assert reports[-1][1]["epoch"] == best_epoch == best["epoch"]


def test_same_seed_same_per_epoch_val_auc(tiny_data):
    def curve() -> list[float]:
        aucs = []
        train_trial(
            TrainSettings(
                backbone="resnet10t", img_size=32, batch_size=8, epochs=2, augment="flips", seed=5
            ),
            DataConfig(root=str(tiny_data)),
            lambda m, _: aucs.append(m["val_auc"]),
        )
        return aucs

    first = curve()
    assert curve() == pytest.approx(first, abs=1e-6)


def test_a_deadline_already_past_reports_no_epoch(tiny_data):
    """The epoch the deadline cuts is neither scored nor saved: with no epoch done, nothing is."""
    reports = []
    best = train_trial(
        TrainSettings(backbone="test_resnet", img_size=32, batch_size=8, epochs=2),
        DataConfig(root=str(tiny_data)),
        lambda metrics, folder: reports.append(metrics),
        deadline=time.time() - 1,
    )
    assert best == {} and reports == []


def test_a_refit_trains_on_trainset_and_the_selection_part_alone_and_keeps_its_last_epoch(
    tiny_data, monkeypatch
):
    """A spy on the decoder: a refit opens trainset and the selection part of valset, never an
    image of the report part; it scores nothing, stops at its epoch, and best.pt holds that epoch's
    weights, of the kind its search trial kept."""
    import torch

    import ffdi_tune.data.layout as layout
    from ffdi_tune.data.holdout import split_valset
    from ffdi_tune.data.layout import read_split
    from ffdi_tune.training.trial import BEST_FILE, Refit

    cfg = DataConfig(root=str(tiny_data), cache=False)
    holdout = split_valset(read_split(cfg, "val"), 0.5, seed=0)
    opened: list[str] = []
    decode = layout._decode
    monkeypatch.setattr(
        layout, "_decode", lambda path, *a, **k: opened.append(path.name) or decode(path, *a, **k)
    )
    kept: list[dict] = []

    def report(metrics, folder):
        kept.append({**metrics, "best": torch.load(folder / BEST_FILE, weights_only=True)})

    s = TrainSettings(backbone="test_resnet", img_size=32, batch_size=8, epochs=3, ema_decay=0.9)
    # the trial's schedule over its 3 epochs, stopped at its best epoch, the 2nd
    train_trial(s, cfg, report, refit=Refit(holdout.select_names, kind="ema", epochs=2))
    train_names = set(read_split(cfg, "train").names)
    assert set(opened) == train_names | set(holdout.select_names)
    assert not set(holdout.report_names) & set(opened)
    assert [k["epoch"] for k in kept] == [1, 2] and "val_auc" not in kept[-1]
    assert kept[-1]["best"]["epoch"] == 2
    assert kept[-1]["best"]["weights_kind"] == "ema" and kept[-1]["weights_kept"] == "ema"


def test_a_crop_trial_scores_centre_squares_and_predicts_from_its_checkpoint_alike(tiny_data):
    """``resize: crop``: the trial trains on random 24 px windows of 32 px squares and validates
    on their centres; its best.pt says so, and prediction from it repeats the validation."""
    import torch

    from ffdi_tune.scoring.metrics import roc_auc
    from ffdi_tune.scoring.predict import DecodedSplits, member_from_checkpoint, predict_views
    from ffdi_tune.training.trial import BEST_FILE

    kept = {}

    def report(metrics, folder):
        kept["metrics"] = metrics
        kept["best"] = torch.load(folder / BEST_FILE, weights_only=True)

    s = TrainSettings(
        backbone="test_resnet", img_size=24, batch_size=8, epochs=1, resize="crop", cache_size=32
    )
    cfg = DataConfig(root=str(tiny_data), cache=False)
    train_trial(s, cfg, report, robust_val=None)
    best = kept["best"]
    assert (best["resize"], best["decode_size"], best["eval_img_size"]) == ("crop", 32, 24)
    member = member_from_checkpoint(best, "m", torch.device("cpu"))
    splits = DecodedSplits(cfg)
    images = splits.for_member("val", member)
    assert images.shape[-1] == 32 and member.crop == 24
    scores = predict_views(member, images, ["identity", "crop_tl"])
    targets = splits.split("val").targets
    assert roc_auc(targets, scores[0]) == pytest.approx(kept["metrics"]["val_auc"])
    assert not np.allclose(scores[0], scores[1])  # a corner is another window
