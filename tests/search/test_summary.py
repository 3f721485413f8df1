"""A finished search's summary on its parent run, written to a real MLflow store."""

from __future__ import annotations

import math

from mlflow.tracking import MlflowClient

from ffdi_tune.search.summary import search_history, summarise_search
from ffdi_tune.search.trials_table import TrialRow, write_trials_csv
from ffdi_tune.tracking import Tracker

# (trial id, status, best val_auc, lr, batch size); t5 failed before it scored an epoch
TRIALS = [
    ("t1", "FINISHED", 0.71, 0.001, 16),
    ("t2", "STOPPED", 0.64, 0.01, 32),
    ("t3", "FINISHED", 0.83, 0.003, 16),
    ("t4", "CUT", 0.78, 0.0005, 32),
    ("t5", "FAILED", math.nan, 0.02, 16),
]


def _search(tmp_path, trials):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("summary")
    parent = tracker.search_run(exp, "summary", False, "name: summary\n", str(tmp_path))
    rows = []
    for trial_id, status, best, lr, batch_size in trials:
        params = {"lr": lr, "batch_size": batch_size}
        run_id = tracker.trial_run(exp, parent, trial_id, params)
        tracker.finish(run_id, "FAILED" if status == "FAILED" else "FINISHED")
        rows.append(TrialRow(trial_id, run_id, status, best, 2, params))
    trials_csv = write_trials_csv(rows, tmp_path / "trials.csv", "val_auc")
    return tracker, exp, parent, rows, trials_csv, MlflowClient(uri)


def test_the_parent_run_gets_totals_the_best_trial_and_the_figures(tmp_path):
    tracker, exp, parent, rows, trials_csv, client = _search(tmp_path, TRIALS)
    summarise_search(tracker, exp, parent, rows, "val_auc", trials_csv, ["lr", "batch_size"])
    run = client.get_run(parent)
    assert run.data.metrics == {"trials_finished": 4, "trials_failed": 1, "best_val_auc": 0.83}
    best = next(r for r in rows if r.trial_id == "t3")
    assert run.data.tags["ffdi.best_trial_id"] == "t3"
    assert run.data.tags["ffdi.best_run_id"] == best.run_id
    logged = {a.path for a in client.list_artifacts(parent)}
    assert {"trials.csv", "search_history.png", "param_importance.png"} <= logged


def test_a_search_without_a_scored_trial_logs_its_totals_and_table_only(tmp_path):
    tracker, exp, parent, rows, trials_csv, client = _search(tmp_path, TRIALS[-1:])
    summarise_search(tracker, exp, parent, rows, "val_auc", trials_csv, ["lr"])
    run = client.get_run(parent)
    assert run.data.metrics == {"trials_finished": 0, "trials_failed": 1}
    assert "ffdi.best_trial_id" not in run.data.tags
    assert {a.path for a in client.list_artifacts(parent)} == {"search_space.yaml", "trials.csv"}


def test_the_history_has_each_finished_trials_run_times_best_value_and_params(tmp_path):
    tracker, exp, parent, rows, _, _ = _search(tmp_path, TRIALS)
    finished = [r for r in rows if r.status != "FAILED"]
    history = search_history(tracker, exp, parent, finished, "val_auc")
    assert list(history["val_auc"]) == [0.71, 0.64, 0.83, 0.78]
    assert list(history["lr"]) == [0.001, 0.01, 0.003, 0.0005]
    assert (history["end_time"] >= history["start_time"]).all()
