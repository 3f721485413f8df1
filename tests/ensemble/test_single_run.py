"""``ffdi-tune predict``: one trial's best.pt, fetched from a real MLflow store, scored on testset
with its TTA views averaged, written as a submission."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.single_run import predict_run
from ffdi_tune.errors import TrackingError
from ffdi_tune.scoring.predict import DecodedSplits, load_member, predict_views
from ffdi_tune.tracking import Tracker
from ffdi_tune.training.checkpoint import BEST_FILE
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import train_trial


def test_one_trials_submission_is_its_mean_over_views(tiny_data, tmp_path):
    best = tmp_path / "best.pt"

    def keep_best(metrics, folder):  # what a search's trial hands Ray after each epoch
        shutil.copy(folder / BEST_FILE, best)

    settings = TrainSettings(backbone="resnet10t", img_size=32, batch_size=8, epochs=1)
    train_trial(settings, DataConfig(root=str(tiny_data)), keep_best)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("one")
    parent = tracker.search_run(exp, "one", False, "name: one\n", str(tiny_data))
    run = tracker.trial_run(exp, parent, "t1", {"backbone": "resnet10t"})
    tracker.log_artifact(run, best, "checkpoint")
    tracker.finish(run)

    data, views = DataConfig(root=str(tiny_data)), ["identity", "hflip"]
    out = predict_run(tracker, run, data, views, tmp_path / "sub" / "one.csv")
    written = pd.read_csv(out)

    splits = DecodedSplits(data)
    member = load_member(best, "local")
    log_odds = predict_views(member, splits.images("test", member.img_size), views)
    assert written["img_name"].tolist() == list(splits.split("test").names)
    assert np.allclose(written["y_pred"], expit(log_odds.mean(0)), rtol=0, atol=1e-6)
    assert not np.allclose(log_odds[0], log_odds[1])  # the views differ: the mean is of both
    with pytest.raises(TrackingError, match="no readable artifact checkpoint/best.pt"):
        predict_run(tracker, parent, data, views, tmp_path / "none.csv")  # a run without one
    assert not (tmp_path / "none.csv").exists()
