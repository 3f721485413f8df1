"""Space translation: YAML domains -> Optuna define-by-run -> trial settings."""

from __future__ import annotations

import optuna

from ffdi_tune.config import parse_search_config
from ffdi_tune.search.space import DefineByRun, trial_settings

SPACE = {
    "name": "s",
    "data": {"root": "/d"},
    "train": {"backbone": "resnet10t", "img_size": 32},
    "space": {
        "backbone": {"choice": ["resnet10t", "mobilenetv3_small_050"]},
        "lr": {"loguniform": [1e-4, 1e-2]},
        "step_size": {"int": [2, 6]},
        "gamma": {"uniform": [0.5, 0.95]},
        "augment": {"choice": ["flips", "color"]},
    },
    "per_backbone": {"mobilenetv3_small_050": {"lr": {"loguniform": [1e-3, 3e-2]}, "img_size": 48}},
}


def sample(n: int, seed: int = 0):
    cfg = parse_search_config(SPACE)
    fn = DefineByRun.from_config(cfg)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = fn(trial) or {}
        config = {**trial.params, **constants}
        out.append((config, trial_settings(cfg.train, config)))
        study.tell(trial, 0.5)
    return out


def test_every_sample_is_inside_its_domain():
    for config, s in sample(30):
        assert s.backbone in ("resnet10t", "mobilenetv3_small_050")
        assert 2 <= s.step_size <= 6 and isinstance(s.step_size, int)
        assert 0.5 <= s.gamma <= 0.95
        assert s.augment in ("flips", "color")
        if s.backbone == "resnet10t":
            assert 1e-4 <= s.lr <= 1e-2 and s.img_size == 32 and "lr" in config
        else:
            # the conditional range and constant apply, under their own Optuna name
            assert 1e-3 <= s.lr <= 3e-2 and s.img_size == 48
            assert "lr:mobilenetv3_small_050" in config and "lr" not in config


def test_both_branches_are_explored_and_seeded():
    a, b = sample(20, seed=1), sample(20, seed=1)
    assert [c for c, _ in a] == [c for c, _ in b]
    assert {s.backbone for _, s in a} == {"resnet10t", "mobilenetv3_small_050"}


def test_fixed_settings_pass_through():
    cfg = parse_search_config(
        {"name": "s", "data": {"root": "/d"}, "train": {"epochs": 7, "ema_decay": 0.99}}
    )
    s = trial_settings(cfg.train, {})
    assert s.epochs == 7 and s.ema_decay == 0.99
