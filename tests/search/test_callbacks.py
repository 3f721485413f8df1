"""The driver's callbacks on Tune (trials mirrored into MLflow, the time budget's clock), driven as
Tune's controller drives them."""

import json
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.result import SHOULD_CHECKPOINT

from ffdi_tune.search.budget import BUDGET_FILE, FinalStageEstimate, TimeBudget
from ffdi_tune.search.callbacks import BudgetClock, MlflowTrials
from ffdi_tune.search.searcher import LiveBudget, attach_budget, detach_budget
from ffdi_tune.tracking import Tracker


def _trial(trial_id: str = "t1") -> SimpleNamespace:
    """What the callbacks read of a Tune trial (no settings searched: 2 epochs planned)."""
    return SimpleNamespace(
        trial_id=trial_id, config={}, last_result={}, checkpoint=None, error_file=None
    )


def _callback(tmp_path, search_name: str = ""):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("cb")
    parent = tracker.search_run(exp, "cb", False, "name: cb\n", str(tmp_path))
    mirror = MlflowTrials(tracker, exp, parent, {}, val_images=10, search_name=search_name)
    return mirror, _trial(), MlflowClient(uri)


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


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _each(callbacks, hook: str, *args, **kwargs) -> None:
    """Call ``hook`` on every callback in order, as Tune's callback list does."""
    for callback in callbacks:
        getattr(callback, hook)(0, [], *args, **kwargs)


def test_the_budget_clock_decides_a_cut_that_the_trials_run_is_tagged_with(tmp_path):
    clock = Clock()
    live = LiveBudget(TimeBudget(100.0, folder=tmp_path, clock=clock), FinalStageEstimate(0, 0, 1))
    mirror, _, client = _callback(tmp_path, search_name="clocked")
    callbacks = [BudgetClock("clocked", {}), mirror]
    stopped, cut = _trial("stopped"), _trial("cut")
    attach_budget("clocked", live)
    try:
        _each(callbacks, "on_trial_start", stopped)
        _each(callbacks, "on_trial_start", cut)
        clock.now += 30
        _each(callbacks, "on_trial_result", stopped, {"epoch": 1, "val_auc": 0.6})
        assert live.scored == {"stopped"}
        assert live.to_first_epoch_s == [30.0]  # from its start to its first scored epoch
        assert json.loads((tmp_path / BUDGET_FILE).read_text())["used_s"] == pytest.approx(30)
        stopped.last_result = {"epoch": 1}  # ASHA stopped it after 1 of its 2 epochs
        _each(callbacks, "on_trial_complete", stopped)
        clock.now += 69.5  # half a second of the budget left
        cut.last_result = {"epoch": 1}
        _each(callbacks, "on_trial_complete", cut)
    finally:
        detach_budget("clocked")
    assert live.budget.cut == {"cut"}
    # how long each took; the cut one as long as both its epochs would have taken
    assert live.budget.trial_s == pytest.approx([30.0, 2 * 99.5])
    assert json.loads((tmp_path / BUDGET_FILE).read_text())["cut"] == ["cut"]
    tags = {
        t.trial_id: client.get_run(mirror.run_ids[t.trial_id]).data.tags for t in (stopped, cut)
    }
    assert (tags["stopped"]["ffdi.stopped_early"], tags["stopped"]["ffdi.budget_cut"]) == (
        "true",
        "false",
    )
    assert (tags["cut"]["ffdi.stopped_early"], tags["cut"]["ffdi.budget_cut"]) == ("false", "true")


def test_without_a_time_budget_the_clock_keeps_nothing_and_no_trial_is_cut(tmp_path):
    mirror, trial, client = _callback(tmp_path, search_name="unbudgeted")
    callbacks = [BudgetClock("unbudgeted", {}), mirror]
    _each(callbacks, "on_trial_start", trial)
    _each(callbacks, "on_trial_result", trial, {"epoch": 1, "val_auc": 0.6})
    trial.last_result = {"epoch": 1}
    _each(callbacks, "on_trial_complete", trial)
    tags = client.get_run(mirror.run_ids["t1"]).data.tags
    assert tags["ffdi.budget_cut"] == "false" and tags["ffdi.stopped_early"] == "true"
    assert not (tmp_path / BUDGET_FILE).exists()


def test_a_failed_trials_run_says_why(tmp_path):
    mirror, trial, client = _callback(tmp_path)
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  ...\nValueError: bad lr\n\n")
    trial.error_file = str(error_file)
    mirror.on_trial_start(0, [], trial)
    mirror.on_trial_error(0, [], trial)
    run = client.get_run(mirror.run_ids["t1"])
    assert run.info.status == "FAILED" and run.data.tags["ffdi.error"] == "ValueError: bad lr"


def test_system_samples_are_logged_on_the_trials_run_with_their_own_times_and_steps(tmp_path):
    cb, trial, client = _callback(tmp_path)
    cb.on_trial_start(0, [], trial)
    first = [[1_700_000_000_000, {"system/cpu_utilization_percentage": 50.0}]]
    later = [
        [1_700_000_010_000 + i, {"system/cpu_utilization_percentage": 60.0 + i}] for i in (0, 1)
    ]
    # as a trial's report carries them: JSON text
    cb.on_trial_result(0, [], trial, {**_result(1, 0.6), "system_metrics": json.dumps(first)})
    cb.on_trial_result(0, [], trial, {**_result(2, 0.7), "system_metrics": json.dumps(later)})
    history = client.get_metric_history(cb.run_ids["t1"], "system/cpu_utilization_percentage")
    assert [(m.step, m.value, m.timestamp) for m in history] == [
        (0, 50.0, 1_700_000_000_000),
        (1, 60.0, 1_700_000_010_000),
        (2, 61.0, 1_700_000_010_001),
    ]
