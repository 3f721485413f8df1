"""What TPE is told, driven as Tune's controller drives a searcher: finished trials with their best
epoch, trials stopped early (ASHA or the budget) as pruned with every epoch's value, and failures as
failed; and what the time budget lets it propose and lets run."""

from __future__ import annotations

import math

import pytest
import yaml
from optuna.trial import TrialState
from ray.tune.search import Searcher

from ffdi_tune.config import parse_search_config
from ffdi_tune.search.budget import FinalStageEstimate, TimeBudget
from ffdi_tune.search.rounds import make_searcher
from ffdi_tune.search.searcher import BudgetStopper, LiveBudget, attach_budget, detach_budget

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


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _live(clock, total_s=100.0):
    return LiveBudget(TimeBudget(total_s, clock=clock), FinalStageEstimate(100, 1, 50))


def _lr_searcher(name: str):
    """A searcher of a one-key space (lr) for search ``name``."""
    return make_searcher(
        parse_search_config(
            yaml.safe_load(
                f"name: {name}\ndata: {{root: d}}\ntrain: {{backbone: test_resnet}}\n"
                "space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"
            )
        )
    )


def test_no_trial_is_proposed_that_the_rest_of_the_budget_cannot_fit():
    clock, searcher = Clock(), _lr_searcher("gate")
    live = _live(clock)
    live.budget.trial_s.append(30.0)  # trials take 30 s
    live.started["t0"] = 0.0  # one ran before
    attach_budget("gate", live)
    try:
        assert isinstance(searcher.suggest("t1"), dict)
        clock.now += 65  # 35 s left: one more fits
        assert isinstance(searcher.suggest("t2"), dict)
        clock.now += 10  # 25 s left
        assert searcher.suggest("t3") == Searcher.FINISHED
    finally:
        detach_budget("gate")


def test_the_first_trial_starts_whenever_time_is_left_beyond_the_final_stages_share():
    """Even when the plan's first rung looks longer than what is left: cut short, it still ships."""
    clock, searcher = Clock(), _lr_searcher("first")
    live = _live(clock)
    live.shortest_trial_s = 500.0  # longer than the whole budget
    attach_budget("first", live)
    try:
        assert isinstance(searcher.suggest("t1"), dict)
        # the next slot Tune fills before t1 has started is gated as usual
        assert searcher.suggest("t2") == Searcher.FINISHED
        live.started["t1"] = 0.0
        assert searcher.suggest("t2b") == Searcher.FINISHED
        # a resumed run (its budget has seen trials end) is gated like the others
        live.started.clear()
        live.budget.trial_s.append(90.0)
        assert searcher.suggest("t3") == Searcher.FINISHED
    finally:
        detach_budget("first")


def test_a_planned_search_gates_new_trials_on_the_first_rung_not_the_default_recipes_length():
    clock, searcher = Clock(), _lr_searcher("gate2")
    live = _live(clock)
    live.budget.trial_s.append(60.0)  # the default recipe trained to full length in 60 s
    live.started["default"] = 0.0
    live.shortest_trial_s = 12.0  # the plan: a trial to its first rung takes 12 s
    attach_budget("gate2", live)
    try:
        clock.now += 60  # 40 s left: no room for another 60 s trial, but for a 12 s one
        assert isinstance(searcher.suggest("t1"), dict)
        clock.now += 30  # 10 s left
        assert searcher.suggest("t2") == Searcher.FINISHED
        # measured: trials took 30 s to their first epoch, longer than the plan's 12 s
        clock.now -= 15  # 25 s left: enough for the plan's 12 s, not for the measured 30 s
        live.to_first_epoch_s.append(30.0)
        assert searcher.suggest("t3") == Searcher.FINISHED
        live.to_first_epoch_s[:] = [8.0]  # faster than planned: the plan's 12 s still holds
        assert isinstance(searcher.suggest("t4"), dict)
        # a rung of 2 epochs: the start-up is paid once, then one more epoch at the epoch's pace;
        # 20.5 s are left beside the final stage's 4.5 s
        live.first_rung, live.to_first_epoch_s[:], live.epoch_s[:] = 2, [15.0], [4.0]
        assert isinstance(searcher.suggest("t5"), dict)  # 15 + 4 = 19 s fit; 2 x 15 would not
        live.epoch_s[:] = [7.0]
        assert searcher.suggest("t6") == Searcher.FINISHED  # 15 + 7 = 22 s do not
    finally:
        detach_budget("gate2")


def test_a_running_trial_is_cut_before_an_epoch_that_would_eat_the_final_stages_share():
    clock = Clock()
    live = _live(clock)
    attach_budget("stopper", live)
    stop = BudgetStopper("stopper")
    try:
        # scoring 50 images took 5 s: the final stage (100 images, 1 pass) needs 1.5 x (10 + 3) s
        epoch = {"epoch": 1, "epochs_planned": 3, "epoch_time_s": 20.0, "eval_time_s": 5.0}
        assert not stop("t1", epoch) and live.reserve() == pytest.approx(19.5)
        clock.now += 55  # 45 s left, 19.5 kept back: a 20 s epoch still fits
        assert not stop("t1", dict(epoch, epoch=2)) and live.budget.cut == set()
        clock.now += 10  # 35 s left: it does not
        assert stop("t1", dict(epoch, epoch=2)) and live.budget.cut == {"t1"}
        assert not stop("t2", dict(epoch, epoch=3))  # a trial's last epoch ends by itself
    finally:
        detach_budget("stopper")
    assert not BudgetStopper("stopper")("t1", epoch)  # no live budget: never stops


# -- reproducibility: the same config and seed give the same points, and each trial its own
# seed unless the YAML fixes one

REPRO_SPACE = """
name: repro
data: {root: data}
train: {backbone: resnet10t}
space:
  backbone: {choice: [resnet10t, test_resnet]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  step_size: {int: [1, 4]}
  augment: {choice: [none, flips, color]}
per_backbone:
  test_resnet: {lr: {loguniform: [1.0e-3, 3.0e-2]}}
search: {seed: SEED, tpe_startup_trials: 3}
"""


def proposals(seed: int, n: int = 8) -> list[dict]:
    """The searcher's first ``n`` points, each scored by a fixed function of its lr (TPE learns
    from it)."""
    cfg = parse_search_config(yaml.safe_load(REPRO_SPACE.replace("SEED", str(seed))))
    searcher = make_searcher(cfg)
    out = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        out.append(config)
        lr = next(v for k, v in config.items() if k.startswith("lr"))
        searcher.on_trial_complete(
            f"t{i}", {"val_auc": 1 - abs(math.log10(lr) + 2.5), "training_iteration": 1}
        )
    return out


def test_same_seed_same_sequence_of_configurations():
    first, second = proposals(0), proposals(0)
    assert first == second
    assert len({tuple(sorted(c.items())) for c in first}) == len(first)  # distinct points
    assert proposals(1) != first


def suggested(space: str, n: int = 4) -> list[dict]:
    searcher = make_searcher(parse_search_config(yaml.safe_load(space)))
    return [searcher.suggest(f"t{i}") for i in range(n)]


def test_each_trial_gets_its_own_seed_unless_the_yaml_fixes_one():
    from ffdi_tune.search.space import trial_seed, trial_settings

    seeds = [c["seed"] for c in suggested(REPRO_SPACE.replace("SEED", "0"))]
    assert len(set(seeds)) == 4 and seeds == [trial_seed(0, i) for i in range(4)]
    # the same search, the same seeds
    assert [c["seed"] for c in suggested(REPRO_SPACE.replace("SEED", "0"))] == seeds
    assert not set(seeds) & {c["seed"] for c in suggested(REPRO_SPACE.replace("SEED", "1"))}
    fixed = REPRO_SPACE.replace("SEED", "0").replace(
        "train: {backbone: resnet10t}", "train: {backbone: resnet10t, seed: 7}"
    )
    cfg = parse_search_config(yaml.safe_load(fixed))
    for config in suggested(fixed):
        assert "seed" not in config and trial_settings(cfg.train, config).seed == 7


JOINT_SPACE = """
name: joint
data: {root: data}
train: {backbone: test_resnet, epochs: 1}
space:
  backbone: {choice: [test_resnet, resnet10t]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
per_backbone:
  resnet10t: {gamma: {uniform: [0.3, 0.9]}}
search: {seed: 0, tpe_startup_trials: 2, max_concurrent: CONCURRENT, default_trial: false}
"""


@pytest.mark.parametrize("concurrent", [1, 3])
def test_tpe_models_the_keys_jointly_and_lies_about_running_trials(concurrent):
    """Multivariate grouped TPE proposes from a per-backbone space past its random start (each
    backbone's own keys only with it), with constant_liar only when trials run concurrently."""
    cfg = parse_search_config(yaml.safe_load(JOINT_SPACE.replace("CONCURRENT", str(concurrent))))
    searcher = make_searcher(cfg)
    sampler = searcher.study.sampler
    assert sampler._multivariate and sampler._group
    assert sampler._constant_liar == (concurrent > 1)
    for i in range(6):  # 2 random, then modelled
        config = searcher.suggest(f"t{i}")
        assert ("gamma:resnet10t" in config) == (config["backbone"] == "resnet10t")
        _epoch(searcher, f"t{i}", 1, 0.5 + 0.05 * i)
        searcher.on_trial_complete(f"t{i}", {"val_auc": 0.5 + 0.05 * i, "epoch": 1})
    assert [t.state for t in searcher.study.trials] == [TrialState.COMPLETE] * 6
    off = JOINT_SPACE.replace("CONCURRENT", "3").replace(
        "max_concurrent", "tpe_multivariate: false, max_concurrent"
    )
    sampler_off = make_searcher(parse_search_config(yaml.safe_load(off))).study.sampler
    assert not sampler_off._multivariate and not sampler_off._constant_liar
