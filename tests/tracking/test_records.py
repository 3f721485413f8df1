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


def test_a_split_is_logged_as_an_mlflow_dataset_input_whose_digest_follows_its_images(tmp_path):
    import numpy as np
    from mlflow import MlflowClient

    from ffdi_tune.data.layout import Split
    from ffdi_tune.tracking import dataset_input

    def split(names, targets):
        return Split("train", tuple(names), tuple(tmp_path / n for n in names), np.array(targets))

    first = dataset_input(split(["b.jpg", "a.jpg"], [1, 0]), "trainset", "training", "/data")
    assert first == {
        "name": "trainset",
        "digest": first["digest"],
        "context": "training",
        "source": "/data",
        "rows": 2,
    }
    same = dataset_input(split(["a.jpg", "b.jpg"], [0, 1]), "trainset", "training", "/data")
    relabelled = dataset_input(split(["a.jpg", "b.jpg"], [1, 1]), "trainset", "training", "/d")
    assert same["digest"] == first["digest"] != relabelled["digest"]  # order does not count
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("inputs")
    parent = tracker.search_run(exp, "inputs", False, "name: inputs\n", str(tmp_path))
    tracker.log_inputs(parent, [first])
    (logged,) = MlflowClient(uri).get_run(parent).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("trainset", first["digest"])
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "training"}
    assert '"num_rows": 2' in logged.dataset.profile
