"""A trained member from its best.pt: rebuilt safely, fed at its evaluation size, scored per TTA
view on splits decoded once (tiny real timm models, real JPEGs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError
from ffdi_tune.scoring.metrics import binary_metrics
from ffdi_tune.scoring.predict import DecodedSplits, load_member, predict_views
from ffdi_tune.training.checkpoint import BEST_FILE
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import train_trial


def trained_best(data) -> dict:
    """best.pt of one epoch of resnet10t at 32 px."""
    kept = []
    train_trial(
        TrainSettings(backbone="resnet10t", img_size=32, batch_size=8, epochs=1),
        DataConfig(root=str(data)),
        lambda m, folder: kept.append(torch.load(folder / BEST_FILE, weights_only=True)),
    )
    return kept[-1]


def test_member_loads_from_best_checkpoint_and_rejects_garbage(tiny_data, tmp_path):
    best = trained_best(tiny_data)
    torch.save(best, tmp_path / "best.pt")
    member = load_member(tmp_path / "best.pt", "m", torch.device("cpu"))
    splits = DecodedSplits(DataConfig(root=str(tiny_data)))
    probs = predict_views(
        member, splits.images("val", member.img_size), ["identity", "hflip", "rot90"], 16
    )
    assert (
        probs.shape == (3, 24) and np.isfinite(probs).all() and not np.allclose(probs[0], probs[1])
    )
    # the identity view reproduces the checkpoint's own val AUC
    assert binary_metrics(splits.split("val").targets, probs[0])["val_auc"] == pytest.approx(
        best["metrics"]["val_auc"]
    )
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="can't be loaded"):
        load_member(tmp_path / "bad.pt", "bad")


def test_a_checkpoint_of_another_model_is_a_data_error(tiny_data, tmp_path):
    best = trained_best(tiny_data)
    torch.save(dict(best, backbone="test_resnet"), tmp_path / "best.pt")
    with pytest.raises(
        DataError, match=r"checkpoint .*best.pt of m can't be loaded \(RuntimeError"
    ):
        load_member(tmp_path / "best.pt", "m")


def test_splits_are_decoded_once_per_size(tiny_data):
    splits = DecodedSplits(DataConfig(root=str(tiny_data)))
    val = splits.images("val", 32)
    assert splits.images("val", 32) is val and splits.split("val") is splits.split("val")
    larger = splits.images("val", 40)
    assert tuple(larger.shape) == (24, 3, 40, 40) and tuple(val.shape) == (24, 3, 32, 32)
    assert len(splits.images("test", 32)) == 8 and splits.split("test").targets is None
