"""Time budgets: durations, the clock that does not count a dead driver, the final stage's share."""

from __future__ import annotations

import pytest

from ffdi_tune.budget import FinalStageEstimate, TimeBudget, parse_duration


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
