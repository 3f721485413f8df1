"""Time budgets: the clock that does not count a dead driver, the final stage's share,
and how many trials a resumed search grows to."""

from __future__ import annotations

import pytest

from ffdi_tune.search.budget import FinalStageEstimate, TimeBudget


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
    # rounds.py's own test file would share its name with tests/e2e/test_rounds.py
    from ffdi_tune.search.rounds import trials_wanted

    assert trials_wanted(4, 6, grow=False, finished=True) == 6  # --num-samples 6
    assert trials_wanted(4, 4, grow=True, finished=True) == 8  # --time-budget: num_samples more
    # interrupted, resumed with more time: it finishes what it planned, nothing more
    assert trials_wanted(4, 4, grow=True, finished=False) == 4
    # cut by its budget after 3 of 4, given more time: the fourth
    assert trials_wanted(3, 4, grow=True, finished=True) == 4
    # a grown second round of 8 cut after 3 (11 of 16 planned): first the 5 it planned
    assert trials_wanted(11, 8, grow=True, finished=True, planned=16) == 16
