"""How a trial learns: AMP, MixUp / CutMix, the head's learning rate and the warm-up + StepLR or
cosine schedule, on tiny real timm models."""

from __future__ import annotations

import pytest
import torch

from ffdi_tune.data.settings import DataConfig
from ffdi_tune.models.factory import create_model
from ffdi_tune.training.checkpoint import BEST_FILE
from ffdi_tune.training.optimization import (
    amp_dtype,
    classifier,
    make_mixup,
    make_optimizer,
    make_scheduler,
)
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.state import seed_everything
from ffdi_tune.training.trial import train_trial


def run(settings, data):
    """Train ``settings``; [(metrics, best.pt) of each epoch]."""
    reports = []
    train_trial(
        settings,
        DataConfig(root=str(data)),
        lambda m, folder: reports.append((m, torch.load(folder / BEST_FILE, weights_only=True))),
    )
    return reports


def test_amp_is_a_gpu_thing():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # only compared, never used
    assert all(amp_dtype(amp, cpu) is None for amp in ("auto", "bf16", "fp16", "off"))
    assert amp_dtype("off", gpu) is None
    assert amp_dtype("bf16", gpu) is torch.bfloat16 and amp_dtype("fp16", gpu) is torch.float16


def test_mix_picks_mixup_cutmix_or_both():
    assert make_mixup(TrainSettings(mix="none")) is None
    for mix, mixup_alpha, cutmix_alpha in [
        ("mixup", 0.4, 0.0),
        ("cutmix", 0.0, 1.0),
        ("mixup_or_cutmix", 0.4, 1.0),
    ]:
        mixup = make_mixup(TrainSettings(mix=mix, label_smoothing=0.1))
        assert (mixup.mixup_alpha, mixup.cutmix_alpha) == (mixup_alpha, cutmix_alpha)
        assert mixup.label_smoothing == 0.1 and mixup.num_classes == 2
    # soft targets: each row mixes two images' labels
    mixup = make_mixup(TrainSettings(mix="mixup"))
    torch.manual_seed(0)
    _, soft = mixup(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))
    assert soft.shape == (4, 2) and torch.allclose(soft.sum(1), torch.ones(4))


def test_head_groups_carry_the_head_lr_scale():
    for backbone, input_mode in [("test_resnet", "rgb"), ("test_resnet", "rgb+srm")]:
        model = create_model(backbone, input_mode=input_mode)
        head = {id(p) for p in classifier(model).parameters()}
        optimizer = make_optimizer(
            model, TrainSettings(head_lr_mult=10.0, weight_decay=0.01, lr=1e-3)
        )
        scaled = [g for g in optimizer.param_groups if "lr_scale" in g]
        assert {id(p) for g in scaled for p in g["params"]} == head
        assert all(g["lr_scale"] == 10.0 for g in scaled)
        # timm's split: the head's weight decays, its bias does not
        assert sorted(g["weight_decay"] for g in scaled) == [0.0, 0.01]
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
            list(model.parameters())
        )
    plain = make_optimizer(create_model("test_resnet"), TrainSettings())
    assert all("lr_scale" not in g for g in plain.param_groups)


def test_schedule_warms_up_then_steps_per_epoch():
    model = create_model("test_resnet")
    s = TrainSettings(lr=1e-2, warmup_epochs=1, step_size=2, gamma=0.1)
    optimizer = make_optimizer(model, s)
    scheduler = make_scheduler(optimizer, s, steps_per_epoch=4)

    def lr_at(step):
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    warmup = [lr_at(step) for step in range(5)]
    assert warmup[0] == pytest.approx(1e-4) and warmup[4] == pytest.approx(1e-2)
    assert warmup == sorted(warmup)  # a linear ramp up
    # after warm-up: lr for step_size epochs, then lr * gamma
    assert [lr_at(step) for step in (8, 11, 12, 20)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])


def test_cosine_warms_up_then_follows_half_a_cosine_to_min_lr():
    import math

    model = create_model("test_resnet")
    s = TrainSettings(lr=1e-2, warmup_epochs=1, epochs=5, schedule="cosine", min_lr=1e-4)
    optimizer = make_optimizer(model, s)
    scheduler = make_scheduler(optimizer, s, steps_per_epoch=4)

    def lr_at(step):
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1e-4) and lr_at(4) == pytest.approx(1e-2)
    # after the 4 warm-up steps, 16 steps of min_lr + (lr - min_lr) * (1 + cos(pi t / 16)) / 2
    for step in range(4, 21):
        t = step - 4
        expected = 1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * t / 16)) / 2
        assert lr_at(step) == pytest.approx(expected)
    assert lr_at(20) == pytest.approx(1e-4)
    # the default schedule is still StepLR
    assert TrainSettings().schedule == "step"


def test_warmup_then_step_lr(tiny_data):
    """warmup_epochs ramps lr up from lr / 100 step by step; StepLR counts epochs after warm-up."""
    s = TrainSettings(
        backbone="test_resnet",
        img_size=32,
        batch_size=8,
        epochs=3,
        lr=4e-3,
        step_size=1,
        gamma=0.5,
        warmup_epochs=1,
    )
    reports = run(s, tiny_data)
    assert [m["lr"] for m, _ in reports] == pytest.approx([4e-5, 4e-3, 2e-3])


def test_head_lr_multiplier_scales_only_the_new_classifier(tiny_data):
    """With a near-zero head multiplier the classifier keeps its initial weights, while the
    body learns."""
    s = TrainSettings(
        backbone="resnet10t",
        img_size=32,
        batch_size=8,
        epochs=1,
        lr=3e-3,
        head_lr_mult=1e-9,
        weight_decay=0.01,
    )
    reports = run(s, tiny_data)
    seed_everything(0)  # the seed of a trial run outside a search
    initial = create_model("resnet10t").state_dict()  # the same draw the trial made
    trained = reports[-1][1]["state_dict"]
    assert torch.allclose(trained["fc.weight"], initial["fc.weight"], atol=1e-6)
    assert not torch.allclose(trained["conv1.0.weight"], initial["conv1.0.weight"], atol=1e-4)
    assert reports[-1][0]["lr"] == pytest.approx(3e-3)  # the body's rate is what is logged
