"""One epoch of a trial on real JPEGs with a tiny real timm model: its steps, figures and scores."""

from __future__ import annotations

import time

import pytest
import torch

from ffdi_tune.data.settings import DataConfig
from ffdi_tune.scoring.inference import view_log_odds
from ffdi_tune.scoring.metrics import binary_metrics
from ffdi_tune.training.epoch import evaluate, run_epoch
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.state import build_trial_state


def state_of(data, **settings):
    """A built trial of test_resnet at 32 px on the CPU (robust_val off unless given)."""
    robust_val = settings.pop("robust_val", None)
    s = TrainSettings(
        **{"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "epochs": 1, **settings}
    )
    return build_trial_state(
        s, DataConfig(root=str(data)), "val_auc", None, torch.device("cpu"), 0.0, robust_val, None
    )


def test_an_epoch_steps_once_per_batch_and_scores_the_trained_weights(tiny_data):
    state = state_of(tiny_data)
    metrics = run_epoch(state, 1, None)
    assert state.step == 48 // 8 and state.first_batch_s is not None
    assert metrics["epoch"] == 1 and metrics["time_to_first_batch_s"] == state.first_batch_s
    assert metrics["train_images_per_s"] > 0 and 0 <= metrics["data_wait_share"] <= 1
    assert metrics["eval_time_s"] < metrics["epoch_time_s"]
    # the validation metrics are those of the weights the pass left
    score = view_log_odds(
        state.model, state.splits.val_images, state.mean, state.std, ["identity"]
    )[0]
    expected = binary_metrics(state.splits.val_split.targets, score)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)


def test_a_deadline_already_past_leaves_the_epoch_undone(tiny_data):
    state = state_of(tiny_data)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    assert run_epoch(state, 1, time.time() - 1) is None
    assert state.step == 0 and state.first_batch_s is None
    assert all(torch.equal(v, before[k]) for k, v in state.model.state_dict().items())


def test_the_perturbed_copy_is_scored_when_robust_val_is_on(tiny_data):
    from ffdi_tune.data.perturb import RobustValConfig

    metrics = evaluate(state_of(tiny_data, robust_val=RobustValConfig()), 1)
    assert 0 <= metrics["val_robust_auc"] <= 1
    assert metrics["val_worst_auc"] == min(metrics["val_auc"], metrics["val_robust_auc"])
    assert "val_robust_auc" not in evaluate(state_of(tiny_data), 1)


def test_nan_weights_stop_the_trial_with_a_clear_error(tiny_data):
    state = state_of(tiny_data)
    with torch.no_grad():
        for p in state.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="outputs became NaN at epoch 3; lower lr"):
        evaluate(state, 3)
    with pytest.raises(FloatingPointError, match="train_loss became nan at epoch 2; lower lr"):
        run_epoch(state, 2, None)


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pb = dict(b.named_parameters())
    return sum(float((p - pb[n]).detach().abs().sum()) for n, p in a.named_parameters())


def test_the_ema_warm_up_follows_the_early_weights_closely():
    """With ema_decay 0.9998 a cold EMA barely moves off the first weights in a few steps; the
    warmed-up one (decay 1 - (1 + step) ** -2/3 at first) moves with the trained weights."""
    import timm
    from timm.utils import ModelEmaV3

    from ffdi_tune.training.state import _ema_of

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2)
    initial = timm.create_model("test_resnet", num_classes=2)
    initial.load_state_dict(model.state_dict())
    warm, cold = _ema_of(model, 0.9998, True), _ema_of(model, 0.9998, False)
    assert isinstance(warm, ModelEmaV3) and warm.get_decay(3) < 0.9 < cold.get_decay(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 7):
        opt.zero_grad()
        model(torch.randn(4, 3, 32, 32)).sum().backward()
        opt.step()
        warm.update(model, step=step)
        cold.update(model, step=step)
    trained = _distance(model, initial)
    # past the first step (which both copy), the cold one moves by 1 - 0.9998 a step: it stays
    # near the first step's weights, while the warm one follows the training
    warm_moved, cold_moved = _distance(warm.module, initial), _distance(cold.module, initial)
    assert cold_moved < 0.1 * trained and warm_moved > 3 * cold_moved


def test_the_better_of_the_raw_and_the_ema_weights_is_kept(tiny_data):
    state = state_of(tiny_data, ema_decay=0.9)
    run_epoch(state, 1, None)
    metrics = evaluate(state, 1)
    assert {"val_auc_raw", "val_auc_ema"} <= metrics.keys()
    assert metrics["val_auc"] == max(metrics["val_auc_raw"], metrics["val_auc_ema"])
    # spoil one kind of weights (a constant score: AUC 0.5), then the other: the good one is kept
    for spoiled, kept in (("ema", "raw"), ("raw", "ema")):
        good = {k: v.clone() for k, v in state.weights_of(kept).state_dict().items()}
        with torch.no_grad():
            for name, p in state.weights_of(spoiled).named_parameters():
                p.copy_(good[name])
                if name.endswith("fc.weight") or name.endswith("head.fc.weight"):
                    p.zero_()
        metrics = evaluate(state, 1)
        assert state.kept == kept and state.eval_model is state.weights_of(kept)
        assert metrics[f"val_auc_{spoiled}"] == 0.5 < metrics[f"val_auc_{kept}"]
        assert metrics["val_auc"] == metrics[f"val_auc_{kept}"]
        state.weights_of(spoiled).load_state_dict(good)
    # without ema_decay only the trained weights are scored
    plain = state_of(tiny_data)
    assert "val_auc_ema" not in evaluate(plain, 1) and plain.kept == "raw"


def test_swa_averages_the_last_epochs_exactly_and_recomputes_batch_norm(tiny_data):
    state = state_of(tiny_data, epochs=3, swa_epochs=2, lr=3e-3, gamma=1.0)
    weights, metrics = [], None
    for epoch in (1, 2, 3):
        metrics = run_epoch(state, epoch, None)
        weights.append({k: v.clone() for k, v in state.model.state_dict().items()})
        # the average is scored with the last epoch only
        assert ("val_auc_swa" in metrics) == (epoch == 3) == state.swa_ready
    swa = state.weights_of("swa")
    for name, p in swa.named_parameters():
        assert torch.allclose(p, (weights[1][name] + weights[2][name]) / 2, atol=1e-7)
    # batch-norm statistics: recomputed on trainset for the averaged weights, not averaged
    bn = "bn1.running_mean"
    averaged = (weights[1][bn] + weights[2][bn]) / 2
    assert not torch.allclose(swa.state_dict()[bn], averaged)
    check = torch.optim.swa_utils.AveragedModel(state.model)
    check.module.load_state_dict(swa.state_dict())
    normalised = (state.splits.train_images.float() / 255 - state.mean.view(1, 3, 1, 1)) / (
        state.std.view(1, 3, 1, 1)
    )
    torch.optim.swa_utils.update_bn(normalised.split(8), check)  # the training batch size
    assert torch.allclose(check.module.state_dict()[bn], swa.state_dict()[bn], atol=1e-5)
    assert metrics["val_auc"] == max(metrics["val_auc_raw"], metrics["val_auc_swa"])


def test_past_the_deadline_the_swa_average_is_not_finished_nor_scored(tiny_data):
    import time

    from ffdi_tune.training.epoch import _average

    state = state_of(tiny_data, epochs=1, swa_epochs=1)
    _average(state, 1, deadline=time.time() - 1)  # the budget ended with the last epoch's pass
    assert not state.swa_ready and state.kinds() == ["raw"]
    _average(state, 1, deadline=None)
    assert state.swa_ready and state.kinds() == ["raw", "swa"]
