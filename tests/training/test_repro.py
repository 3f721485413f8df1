"""Reproducibility: same config and seed give the same proposals and the same training curve."""

from __future__ import annotations

import math

import pytest
import yaml

from ffdi_tune.config import parse_search_config
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.search.runner import make_searcher
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import train_trial

SPACE = """
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
    """The searcher's first ``n`` points, each scored by a fixed function of its lr (TPE learns from
    it)."""
    cfg = parse_search_config(yaml.safe_load(SPACE.replace("SEED", str(seed))))
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


def test_same_seed_same_per_epoch_val_auc(tiny_data):
    def curve() -> list[float]:
        aucs = []
        train_trial(
            TrainSettings(
                backbone="resnet10t", img_size=32, batch_size=8, epochs=2, augment="flips", seed=5
            ),
            DataConfig(root=str(tiny_data)),
            lambda m, _: aucs.append(m["val_auc"]),
        )
        return aucs

    first = curve()
    assert curve() == pytest.approx(first, abs=1e-6)


def suggested(space: str, n: int = 4) -> list[dict]:
    searcher = make_searcher(parse_search_config(yaml.safe_load(space)))
    return [searcher.suggest(f"t{i}") for i in range(n)]


def test_each_trial_gets_its_own_seed_unless_the_yaml_fixes_one():
    from ffdi_tune.search.space import trial_seed, trial_settings

    seeds = [c["seed"] for c in suggested(SPACE.replace("SEED", "0"))]
    assert len(set(seeds)) == 4 and seeds == [trial_seed(0, i) for i in range(4)]
    # the same search, the same seeds
    assert [c["seed"] for c in suggested(SPACE.replace("SEED", "0"))] == seeds
    assert not set(seeds) & {c["seed"] for c in suggested(SPACE.replace("SEED", "1"))}
    fixed = SPACE.replace("SEED", "0").replace(
        "train: {backbone: resnet10t}", "train: {backbone: resnet10t, seed: 7}"
    )
    cfg = parse_search_config(yaml.safe_load(fixed))
    for config in suggested(fixed):
        assert "seed" not in config and trial_settings(cfg.train, config).seed == 7
