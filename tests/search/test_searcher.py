"""What TPE is told, driven as Tune's controller drives a searcher: finished trials with their best
epoch, trials stopped early (ASHA or the budget) as pruned with every epoch's value, failures as
failed."""

from __future__ import annotations

import yaml
from optuna.trial import TrialState

from ffdi_tune.config import parse_search_config
from ffdi_tune.search.rounds import make_searcher

SPACE = """
name: told
data: {root: data}
train: {backbone: test_resnet, epochs: 3}
space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}
search: {seed: 0, tpe_startup_trials: 2, metric: METRIC}
"""


def _searcher(metric: str = "val_auc"):
    return make_searcher(parse_search_config(yaml.safe_load(SPACE.replace("METRIC", metric))))


def _epoch(searcher, trial_id: str, epoch: int, value: float, metric: str = "val_auc") -> dict:
    result = {metric: value, "epoch": epoch, "epochs_planned": 3, "training_iteration": epoch}
    searcher.on_trial_result(trial_id, result)
    return result


def _study_trials(searcher) -> dict[str, object]:
    """Trial id -> the Optuna trial the study recorded for it."""
    by_number = {t.number: t for t in searcher.study.trials}
    return {tid: by_number[ot.number] for tid, ot in searcher._ot_trials.items()}


def test_finished_trials_are_told_their_best_epoch_and_stopped_ones_are_pruned():
    searcher = _searcher()
    for tid in ("done", "stopped", "crashed"):
        assert searcher.suggest(tid)["lr"] > 0
    # ran all 3 epochs, best at epoch 2: COMPLETE with 0.8, not the last epoch's 0.7
    for epoch, value in enumerate((0.6, 0.8, 0.7), start=1):
        last = _epoch(searcher, "done", epoch, value)
    searcher.on_trial_complete("done", last)
    # ASHA stops a trial on the result of its epoch 1: Tune hands that result to on_trial_complete
    # only, never to on_trial_result
    searcher.on_trial_complete(
        "stopped", {"val_auc": 0.55, "epoch": 1, "epochs_planned": 3, "training_iteration": 1}
    )
    _epoch(searcher, "crashed", 1, 0.9)
    searcher.on_trial_complete("crashed", None, error=True)

    told = _study_trials(searcher)
    assert told["done"].state == TrialState.COMPLETE and told["done"].value == 0.8
    assert told["done"].intermediate_values == {1: 0.6, 2: 0.8, 3: 0.7}
    assert told["stopped"].state == TrialState.PRUNED
    assert told["stopped"].intermediate_values == {1: 0.55}
    assert told["crashed"].state == TrialState.FAIL


def test_a_lower_is_better_metric_is_told_its_minimum():
    searcher = _searcher("val_loss")
    searcher.suggest("t")
    for epoch, value in enumerate((0.7, 0.5, 0.65), start=1):
        last = _epoch(searcher, "t", epoch, value, "val_loss")
    searcher.on_trial_complete("t", last)
    told = _study_trials(searcher)["t"]
    assert told.state == TrialState.COMPLETE and told.value == 0.5
    assert told.intermediate_values == {1: 0.7, 2: 0.5, 3: 0.65}
