"""The plan a time budget makes, on made-up probe costs (no clock, no training)."""

from __future__ import annotations

import pytest

from ffdi_tune.errors import SearchError
from ffdi_tune.search.plan import PlanInputs, expected_epochs_per_trial, plan_search, rung_epochs


def inputs(**changes) -> PlanInputs:
    base = dict(
        budget_s=300.0,
        used_s=20.0,
        epoch_s=30.0,
        eval_image_s=0.002,
        final_images=600,
        final_passes=2,
        full_epochs=4,
        slots=2,
        accelerators=0,
    )
    return PlanInputs(**{**base, **changes})


def test_rungs_double_up_to_the_full_length():
    assert rung_epochs(1, 2, 8) == [1, 2, 4, 8]
    assert rung_epochs(1, 2, 6) == [1, 2, 4, 6]
    assert rung_epochs(2, 3, 2) == [2]
    # half the trials survive each rung: 1 + 1/2 + 2/4 + 4/8 epochs on average
    assert expected_epochs_per_trial([1, 2, 4, 8], 2) == 2.5
    assert expected_epochs_per_trial([1, 2, 4], 2) == 2.0


def test_a_300s_cpu_budget_runs_the_default_to_full_length_and_a_few_short_trials():
    plan = plan_search(inputs())
    # one at a time: two CPU trials at once would each take twice as long per epoch
    assert plan.max_concurrent == 1 and plan.trial_epoch_s == 30.0
    assert plan.rungs == [1, 2, 4] and plan.max_epochs == 4 and plan.expected_best_epochs == 4
    # the default's 4 epochs, then trials of 1 + 1/2 + 2/4 = 2 epochs on average, 3 s to start each
    assert plan.num_samples == 2
    # kept for its 2 members: 1.5 * 2 * (600 images * 2 views * 2 ms + 3 s to load)
    assert plan.final_reserve_s == pytest.approx(16.2)
    # what the plan spends fits what the budget leaves for training
    spent = (plan.max_epochs + (plan.num_samples - 1) * 2.0) * plan.trial_epoch_s + 2 * 3.0
    assert spent <= plan.training_s <= 300 - 20 - plan.final_reserve_s
    # a new trial starts while the budget fits its start and one epoch (the first rung)
    assert plan.first_rung_s == 30.0 + 3.0


def test_a_night_on_eight_gpus_runs_one_trial_per_gpu_and_many_trials():
    plan = plan_search(
        inputs(budget_s=8 * 3600, used_s=600, epoch_s=600, full_epochs=8, slots=8, accelerators=8)
    )
    assert plan.max_concurrent == 8 and plan.trial_epoch_s == 600
    assert plan.rungs == [1, 2, 4, 8]
    # 8 GPUs x 7.4 h of training = 355 ten-minute epochs: 8 for the default, 2.5 each for others
    assert plan.training_s == pytest.approx(7 * 3600 + 24 * 60 + 35, abs=1)
    left = plan.training_s * 8 - 8 * 600 - 3.0
    assert plan.num_samples == 1 + int(left / (2.5 * 600 + 3.0)) == 139


def test_more_budget_means_more_trials_never_shorter_ones():
    small, large = plan_search(inputs()), plan_search(inputs(budget_s=1200))
    assert large.num_samples > small.num_samples
    assert large.max_epochs == small.max_epochs == 4


def test_keys_the_user_wrote_win():
    plan = plan_search(inputs(explicit_num_samples=7, explicit_max_concurrent=2))
    assert plan.num_samples == 7 and plan.max_concurrent == 2
    assert plan.trial_epoch_s == 60.0  # two CPU trials share the cores


def test_a_budget_that_cannot_fit_one_full_length_trial_says_so_in_one_line():
    with pytest.raises(SearchError) as err:
        plan_search(inputs(budget_s=120))
    message = str(err.value)
    assert "\n" not in message
    assert "one full-length trial of 4 epochs takes about 2m" in message
    assert "raise --time-budget to at least" in message


def test_the_plan_reads_as_one_line():
    line = plan_search(inputs()).describe()
    assert line.startswith("plan: 2 trials, 1 at a time, ASHA rungs 1/2/4 epochs (the best train")
    assert "kept for the final stage" in line and "\n" not in line


def space(**search):
    from ffdi_tune.config import parse_search_config

    return parse_search_config(
        {"name": "p", "data": {"root": "x"}, "train": {"epochs": 4}, "search": search}
    )


def test_the_plan_sets_what_the_user_left_to_it():
    from ffdi_tune.search.plan import apply_plan

    plan = plan_search(inputs())
    cfg = apply_plan(space(time_budget=300), plan)
    assert (cfg.search.num_samples, cfg.search.max_concurrent) == (2, 1)
    assert cfg.scheduler.max_epochs == 4
    # one trial at a time on 2 CPUs: it gets both
    assert cfg.resources.cpu == 2.0


def test_a_resumed_search_keeps_its_plan_and_one_without_a_budget_has_none(tmp_path):
    from ffdi_tune.search.plan import PLAN_FILE, plan_for_run

    plan = plan_search(inputs())
    (tmp_path / PLAN_FILE).write_text(__import__("json").dumps(plan.as_dict()))
    cfg, kept = plan_for_run(space(time_budget=300), tmp_path, True, None, 0.0, (2, None))
    assert kept == plan and cfg.search.num_samples == 2
    cfg, none = plan_for_run(space(), tmp_path, False, None, 0.0, (2, None))
    assert none is None and cfg == space()


def test_an_unwritten_recipe_length_grows_with_the_budget():
    # the longest rung ladder whose top trial alone fits 60% of the training time
    short, long = (
        plan_search(inputs(full_epochs=None)),
        plan_search(inputs(full_epochs=None, budget_s=1200)),
    )
    assert short.max_epochs == 4 and short.rungs == [1, 2, 4]
    assert long.max_epochs == 16 and long.rungs == [1, 2, 4, 8, 16]
    assert long.max_epochs * long.trial_epoch_s <= 0.6 * long.training_s


def test_a_fifo_search_trains_every_trial_to_full_length():
    plan = plan_search(inputs(asha=False))
    assert plan.rungs == [4]
    # the default's 4 epochs and 4 for each other trial, 3 s to start each
    assert plan.num_samples == 1 + int((plan.training_s - 4 * 30 - 3) // (4 * 30 + 3))


def test_the_plan_sets_the_length_only_where_the_user_left_it():
    from ffdi_tune.search.plan import apply_plan

    chosen = plan_search(inputs(full_epochs=None, budget_s=1200))
    cfg = apply_plan(space(time_budget=1200), chosen)
    assert cfg.train.epochs == 4  # written in train: (space() writes epochs: 4)
    from ffdi_tune.config import parse_search_config

    unwritten = parse_search_config({"name": "p", "data": {"root": "x"}})
    assert apply_plan(unwritten, chosen).train.epochs == 16
    assert apply_plan(unwritten, chosen).scheduler.max_epochs == 16


def test_an_epoch_costs_its_batches_its_scoring_twice_with_an_ema_and_its_checkpoint(
    monkeypatch, tmp_path
):
    from ffdi_tune.config import DataConfig, parse_search_config
    from ffdi_tune.data.check import DataCheck
    from ffdi_tune.search import plan
    from ffdi_tune.search.probe import ProbeResult

    monkeypatch.setattr(plan, "probe_cached", lambda *a, **k: ProbeResult(0.5, 0.01, 8, 2.0))
    summary = {"train": {"images": 80}, "val": {"images": 40}, "test": {"images": 10}}
    check = DataCheck(DataConfig(root=str(tmp_path)), summary)

    def epoch_s(train: dict) -> float:
        raw = {
            "name": "p",
            "data": {"root": str(tmp_path)},
            "train": train,
            "search": {"time_budget": 300},
        }
        return plan.plan_inputs(parse_search_config(raw), check, 0.0, 1, None).epoch_s

    # the holdout keeps half of valset unseen; the other half is scored clean and perturbed
    selection = 2 * round(40 * 0.5)
    assert epoch_s({"epochs": 4}) == pytest.approx(10 * 0.5 + selection * 0.01 + 2.0)
    with_ema = epoch_s({"epochs": 4, "ema_decay": 0.99})
    assert with_ema == pytest.approx(10 * 0.5 + 2 * selection * 0.01 + 2.0)
