"""The default recipe: the train: values where the space allows them, else the middle of a range."""

from __future__ import annotations

import optuna
from helpers import REPO

from ffdi_tune.config import load_search_config, parse_search_config
from ffdi_tune.search.default_recipe import default_point
from ffdi_tune.search.space import DefineByRun


def space(**sections):
    return parse_search_config({"name": "d", "data": {"root": "x"}, **sections})


def test_train_values_inside_the_space_are_the_recipe():
    cfg = space(
        train={"lr": 2e-3, "augment": "color", "step_size": 3},
        space={
            "lr": {"loguniform": [1e-4, 1e-2]},
            "augment": {"choice": ["flips", "color"]},
            "step_size": {"int": [1, 4]},
        },
    )
    assert default_point(cfg) == {"lr": 2e-3, "augment": "color", "step_size": 3}


def test_values_outside_the_space_give_its_middle_or_first_choice():
    cfg = space(
        train={"lr": 1.0, "augment": "jpeg", "gamma": 0.9},
        space={
            "lr": {"loguniform": [1e-4, 1e-2]},
            "augment": {"choice": ["flips", "color"]},
            "gamma": {"uniform": [0.2, 0.4]},
            "step_size": {"logint": [2, 32]},
        },
    )
    point = default_point(cfg)
    assert point["lr"] == 1e-3  # geometric middle of a log range
    assert point["augment"] == "flips"
    assert abs(point["gamma"] - 0.3) < 1e-12
    assert point["step_size"] == 8  # train.step_size (1) is outside: the middle


def test_the_first_backbone_with_its_own_conditional_range():
    cfg = space(
        train={"lr": 1e-3},
        space={"backbone": {"choice": ["resnet10t", "resnet18"]}, "lr": {"uniform": [1e-4, 1e-2]}},
        per_backbone={"resnet10t": {"lr": {"loguniform": [1e-5, 1e-4]}, "img_size": 48}},
    )
    # resnet10t's own lr range does not hold 1e-3: its middle; img_size is a constant override
    assert default_point(cfg) == {"backbone": "resnet10t", "lr:resnet10t": 1e-5**0.5 * 1e-4**0.5}


def test_every_shipped_space_enqueues_into_optuna_as_its_first_trial():
    for name in ("demo", "efficientnet", "convnext"):
        cfg = load_search_config(REPO / "search_spaces" / f"{name}.yaml")
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=0)
        )
        point = default_point(cfg)
        study.enqueue_trial(point)
        trial = study.ask()
        DefineByRun.from_config(cfg)(trial)
        assert trial.params == point, name
