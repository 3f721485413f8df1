"""The driver callback that mirrors Tune trials into MLflow, driven as Tune's controller does."""

from types import SimpleNamespace

from mlflow.tracking import MlflowClient
from ray.tune.result import SHOULD_CHECKPOINT

from ffdi_tune.search.callbacks import MlflowTrials
from ffdi_tune.tracking import Tracker


def _callback(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("cb")
    parent = tracker.search_run(exp, "cb", False, "name: cb\n", str(tmp_path))
    trial = SimpleNamespace(
        trial_id="t1", config={}, last_result={}, checkpoint=None, error_file=None
    )
    return MlflowTrials(tracker, exp, parent, {}, val_images=10), trial, MlflowClient(uri)


def _result(epoch: int, auc: float) -> dict:
    return {"epoch": epoch, "val_auc": auc, SHOULD_CHECKPOINT: True}


def _history(cb, trial, client):
    run_id = cb.run_ids[trial.trial_id]
    return [(m.step, m.value) for m in client.get_metric_history(run_id, "val_auc")]


def test_an_epoch_lost_with_its_node_is_logged_once_from_its_rerun(tmp_path):
    """Tune reports an epoch before its checkpoint is saved; a node lost in between restarts the
    trial from the epoch before. Only the rerun's values reach MLflow, each epoch once."""
    cb, trial, client = _callback(tmp_path)
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, _result(1, 0.6))
    cb.on_checkpoint(0, [], trial, checkpoint=object())
    cb.on_trial_result(0, [], trial, _result(2, 0.7))
    assert _history(cb, trial, client) == [(1, 0.6)]  # held until its checkpoint is registered
    cb.on_trial_recover(0, [], trial)  # the node died before the save came back
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, _result(2, 0.75))
    cb.on_checkpoint(0, [], trial, checkpoint=object())
    cb.on_trial_result(0, [], trial, _result(3, 0.8))
    cb.on_checkpoint(0, [], trial, checkpoint=object())
    trial.last_result = {"epoch": 3}
    cb.on_trial_complete(0, [], trial)
    assert _history(cb, trial, client) == [(1, 0.6), (2, 0.75), (3, 0.8)]
    run = client.get_run(cb.run_ids["t1"])
    assert run.info.status == "FINISHED" and run.data.tags["ffdi.epochs_run"] == "3"


def test_a_result_without_a_checkpoint_is_logged_at_once_and_nothing_is_held_past_the_end(
    tmp_path,
):
    cb, trial, client = _callback(tmp_path)
    cb.on_trial_result(0, [], trial, {"epoch": 1, "val_auc": 0.6})
    assert _history(cb, trial, client) == [(1, 0.6)]
    cb.on_trial_result(0, [], trial, _result(2, 0.7))
    trial.last_result = {"epoch": 2}
    cb.on_trial_complete(0, [], trial)  # finished: what it reported is its final word
    assert _history(cb, trial, client) == [(1, 0.6), (2, 0.7)]
