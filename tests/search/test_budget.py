"""Time budgets: durations, the clock that does not count a dead driver, the final stage's share."""

from __future__ import annotations

import pytest

from ffdi_tune.durations import parse_duration
from ffdi_tune.search.budget import FinalStageEstimate, TimeBudget


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("8h", 28800),
        ("90m", 5400),
        ("1h30m", 5400),
        ("45s", 45),
        ("2d", 172800),
        ("1.5h", 5400),
        (600, 600),
        ("600", 600),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["8 hours", "h", "", "-5", 0, "1x"])
def test_bad_durations_say_what_is_accepted(bad):
    with pytest.raises(ValueError, match="duration|positive"):
        parse_duration(bad)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_dead_driver_does_not_use_the_budget(tmp_path):
    clock = Clock()
    budget = TimeBudget(3600, folder=tmp_path, clock=clock)
    clock.now += 600
    budget.cut.add("t1")
    budget.save()  # the driver is killed here; an hour passes
    clock.now += 3600
    again = TimeBudget.resume(tmp_path, clock=clock)
    assert again.used() == pytest.approx(600) and again.remaining() == pytest.approx(3000)
    assert again.cut == {"t1"}
    clock.now += 100
    assert again.remaining() == pytest.approx(2900)
    # more time for a resumed search: that much beyond what it has used
    more = TimeBudget.resume(tmp_path, extra_s=1800, clock=clock)
    assert more.total_s == pytest.approx(2400) and more.remaining() == pytest.approx(1800)


def test_no_budget_is_none_and_the_yaml_budget_applies_when_nothing_was_kept(tmp_path):
    assert TimeBudget.resume(tmp_path) is None
    assert TimeBudget.resume(tmp_path, total_s=120).remaining() == pytest.approx(120, abs=1)


def test_final_stage_estimate_follows_the_trials_scoring_speed():
    est = FinalStageEstimate(images=600, passes=2, images_per_eval=400)
    assert est.seconds(3) == pytest.approx(1.5 * 3 * 3.0)  # nothing measured yet: checkpoints only
    est.observe({"eval_time_s": 2.0})  # 5 ms an image
    assert est.seconds(3) == pytest.approx(1.5 * 3 * (600 * 2 * 0.005 + 3.0))
    assert FinalStageEstimate(600, 0, 400).seconds(3) == 0.0  # no final stage, nothing kept
    # the final stage scores at most its recipe's pool, however many trials finished
    capped = FinalStageEstimate(600, 2, 400, pool=2)
    capped.observe({"eval_time_s": 2.0})
    assert capped.seconds(10) == pytest.approx(est.seconds(2))


def test_the_drivers_set_up_counts_and_so_does_a_resumed_ones(tmp_path):
    """The clock starts when the driver starts (data check, cache build and Ray come out of the
    budget too), on a first run and on a resume."""
    clock = Clock()
    budget = TimeBudget(3600, folder=tmp_path, clock=clock, started=clock.now - 120)
    assert budget.used() == pytest.approx(120)
    budget.save()
    clock.now += 7200  # dead for two hours, then 30 s of set-up before the budget is read
    again = TimeBudget.resume(tmp_path, clock=clock, started=clock.now - 30)
    assert again.used() == pytest.approx(150) and again.used_before_s == pytest.approx(120)


def test_growing_a_search_adds_a_round_only_to_a_finished_one():
    from ffdi_tune.search.rounds import rounds_wanted

    assert rounds_wanted(4, 6, grow=False, finished=True) == 6  # --num-samples 6
    assert rounds_wanted(4, 4, grow=True, finished=True) == 8  # --time-budget: num_samples more
    # interrupted, resumed with more time: it finishes what it planned, nothing more
    assert rounds_wanted(4, 4, grow=True, finished=False) == 4
    # cut by its budget after 3 of 4, given more time: the fourth
    assert rounds_wanted(3, 4, grow=True, finished=True) == 4
    # a grown second round of 8 cut after 3 (11 of 16 planned): first the 5 it planned
    assert rounds_wanted(11, 8, grow=True, finished=True, planned=16) == 16


def _live(clock, total_s=100.0):
    from ffdi_tune.search.searcher import LiveBudget

    return LiveBudget(TimeBudget(total_s, clock=clock), FinalStageEstimate(100, 1, 50))


def test_no_trial_is_proposed_that_the_rest_of_the_budget_cannot_fit():
    import yaml
    from ray.tune.search import Searcher

    from ffdi_tune.config import parse_search_config
    from ffdi_tune.search.rounds import make_searcher
    from ffdi_tune.search.searcher import attach_budget, detach_budget

    cfg = parse_search_config(
        yaml.safe_load(
            "name: gate\ndata: {root: d}\ntrain: {backbone: test_resnet}\n"
            "space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"
        )
    )
    clock, searcher = Clock(), make_searcher(cfg)
    live = _live(clock)
    live.budget.trial_s.append(30.0)  # trials take 30 s
    attach_budget("gate", live)
    try:
        assert isinstance(searcher.suggest("t1"), dict)
        clock.now += 65  # 35 s left: one more fits
        assert isinstance(searcher.suggest("t2"), dict)
        clock.now += 10  # 25 s left
        assert searcher.suggest("t3") == Searcher.FINISHED
    finally:
        detach_budget("gate")


def test_a_running_trial_is_cut_before_an_epoch_that_would_eat_the_final_stages_share():
    from ffdi_tune.search.searcher import BudgetStopper, attach_budget, detach_budget

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
