"""What the package reads of MLflow runs: a trial's record and a valset split's tags."""

from __future__ import annotations

from types import SimpleNamespace

from ffdi_tune.tracking import Tracker, holdout_from_tags, holdout_tags


def test_a_split_written_as_tags_reads_back_exactly():
    split = SimpleNamespace(fraction=0.3, seed=7, report_hash="abc123")
    assert holdout_from_tags(holdout_tags(split)) == {
        "fraction": 0.3,
        "seed": 7,
        "report_hash": "abc123",
    }
    assert holdout_from_tags({"ffdi.role": "search"}) is None  # a run that records no split


def test_a_trial_run_reads_back_as_its_record(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("records")
    parent = tracker.search_run(exp, "records", False, "name: records\n", str(tmp_path))
    run = tracker.trial_run(exp, parent, "t1", {"lr": 0.01}, run_name="trial-t1")
    tracker.log_metrics(run, {"val_auc": 0.6}, step=1)
    tracker.log_metrics(run, {"val_auc": 0.8}, step=2)
    tracker.set_tags(run, {"ffdi.epochs_run": "2", "ffdi.budget_cut": "true"})
    tracker.finish(run)
    (record,) = tracker.finished_trials(["records"])
    assert (record.run_id, record.run_name, record.trial_id, record.status) == (
        run,
        "trial-t1",
        "t1",
        "FINISHED",
    )
    assert record.epochs_run == 2 and record.budget_cut and not record.stopped_early
    assert record.params == {"lr": "0.01"} and record.metrics == {"val_auc": 0.8}
    assert record.end_s is not None and record.end_s >= record.start_s
    assert tracker.trials_of(exp, parent) == [record]
