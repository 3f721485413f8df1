"""What a trial is built with: its model, data and seed, on CPU with tiny real timm models."""

from __future__ import annotations

import pytest
import torch

from ffdi_tune.data.perturb import RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import ConfigError
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.state import build_trial_state
from ffdi_tune.training.trial import train_trial

CPU = torch.device("cpu")


def settings(**changes) -> TrainSettings:
    return TrainSettings(
        **{"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "epochs": 1, **changes}
    )


def test_a_metric_of_the_perturbed_valset_needs_robust_val(tiny_data):
    data = DataConfig(root=str(tiny_data))
    for robust_val in (None, RobustValConfig(enabled=False)):
        with pytest.raises(ConfigError, match="val_worst_auc is scored on the perturbed valset"):
            build_trial_state(settings(), data, "val_worst_auc", None, CPU, 0.0, robust_val, None)


def test_the_state_holds_the_trials_model_and_data(tiny_data):
    data = DataConfig(root=str(tiny_data))
    plain = build_trial_state(
        settings(eval_img_size=40), data, "val_auc", None, CPU, 0.0, None, None
    )
    assert plain.seed == 0 and plain.ema is None and plain.step_model is plain.model
    assert plain.eval_model is plain.model and not plain.channels_last
    assert plain.amp_dtype is None and plain.mixup is None and plain.num_workers == 0
    assert tuple(plain.splits.train_images.shape[1:]) == (3, 32, 32)
    assert tuple(plain.splits.val_images.shape[1:]) == (3, 40, 40)  # the evaluation size
    assert plain.splits.robust_images is None
    # a search's selection part of valset, its perturbed copy, and the EMA with a seed of its own
    names = plain.splits.val_split.names[::2]
    searched = build_trial_state(
        settings(seed=7, ema_decay=0.9), data, "val_auc", None, CPU, 0.0, RobustValConfig(), names
    )
    assert searched.splits.val_split.names == names and len(searched.splits.val_images) == len(
        names
    )
    assert searched.splits.robust_images.shape == searched.splits.val_images.shape
    assert not torch.equal(searched.splits.robust_images, searched.splits.val_images)
    assert searched.seed == 7 and searched.weights_of("ema") is searched.ema.module
    # until an evaluation keeps the EMA, the trained weights are the scored ones
    assert searched.kept == "raw" and searched.eval_model is searched.model


def test_the_same_seed_draws_the_same_initial_weights(tiny_data):
    data = DataConfig(root=str(tiny_data))

    def initial(seed):
        state = build_trial_state(settings(seed=seed), data, "val_auc", None, CPU, 0.0, None, None)
        return state.model.state_dict()

    first, again, other = initial(3), initial(3), initial(4)
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    assert not all(torch.equal(v, other[k]) for k, v in first.items() if v.is_floating_point())


@pytest.mark.slow
def test_compiled_model_trains_like_the_plain_one(tiny_data):
    """torch.compile (inductor on CPU here) gives the same training within float tolerance."""
    s = settings(augment="none")
    data = DataConfig(root=str(tiny_data))
    plain = train_trial(s, data, lambda m, f: None)
    compiled = train_trial(s.model_copy(update={"compile": True}), data, lambda m, f: None)
    assert compiled["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-3)
    assert compiled["val_auc"] == pytest.approx(plain["val_auc"], abs=0.05)


def test_a_refit_trains_on_trainset_plus_its_valset_images_and_scores_none(tiny_data):
    import numpy as np

    from ffdi_tune.data.layout import read_split
    from ffdi_tune.training.state import Refit

    cfg = DataConfig(root=str(tiny_data), cache=False)
    val = read_split(cfg, "val")
    chosen = val.names[:10]
    s = TrainSettings(backbone="test_resnet", img_size=32, batch_size=8, epochs=1)
    state = build_trial_state(
        s,
        cfg,
        "val_robust_auc",
        None,
        torch.device("cpu"),
        0.0,
        RobustValConfig(),
        None,
        Refit(chosen),
    )
    splits = state.splits
    assert len(splits.train_images) == 48 + 10 == len(splits.train_split)
    assert splits.train_split.names[48:] == tuple(f"valset/{n}" for n in chosen)
    assert np.array_equal(splits.train_split.targets[48:], val.only(chosen).targets)
    assert len(splits.val_images) == 0 and splits.robust_images is None
