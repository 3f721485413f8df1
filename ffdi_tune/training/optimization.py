"""How a trial learns: timm's optimizer (with a head learning-rate multiplier), the StepLR schedule
with warm-up, MixUp / CutMix, and the AMP precision; factories from settings, no training loop."""

from __future__ import annotations

from typing import Any

import torch

from ffdi_tune.training.settings import TrainSettings

__all__ = ["amp_dtype", "make_mixup", "classifier", "make_optimizer", "make_scheduler"]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of setting ``amp`` on ``device`` (None: full float32; AMP is GPU-only)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def make_mixup(s: TrainSettings):
    """timm's ``Mixup`` for setting ``mix`` (with the trial's label smoothing), or None."""
    if s.mix == "none":
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=s.mixup_alpha if s.mix in ("mixup", "mixup_or_cutmix") else 0.0,
        cutmix_alpha=s.cutmix_alpha if s.mix in ("cutmix", "mixup_or_cutmix") else 0.0,
        switch_prob=0.5,
        label_smoothing=s.label_smoothing,
        num_classes=2,
    )


def classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The model's new 2-class head."""
    return getattr(model, "backbone", model).get_classifier()  # through the SRM wrapper


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """timm's optimizer; with ``head_lr_mult`` the new classifier's groups carry an ``lr_scale``.

    timm's schedulers multiply a group's lr by its ``lr_scale``; the weight-decay split (none on
    biases and norms) is timm's own.
    """
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    kwargs = {
        "opt": s.optimizer,
        "lr": s.lr,
        "weight_decay": s.weight_decay,
        "momentum": s.momentum,
    }
    if s.head_lr_mult == 1.0:
        return create_optimizer_v2(model, **kwargs)

    def groups(m: torch.nn.Module) -> list[dict[str, Any]]:
        head = {id(p) for p in classifier(m).parameters()}
        base = (
            param_groups_weight_decay(m, s.weight_decay)
            if s.weight_decay
            else [{"params": list(m.parameters())}]
        )
        out = []
        for group in base:
            for in_head in (False, True):
                params = [p for p in group["params"] if (id(p) in head) == in_head]
                if params:
                    out.append(
                        {**group, "params": params}
                        | ({"lr_scale": s.head_lr_mult} if in_head else {})
                    )
        return out

    return create_optimizer_v2(model, param_group_fn=groups, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, s: TrainSettings, steps_per_epoch: int):
    """StepLR counted in optimizer steps, after ``warmup_epochs`` of linear warm-up from lr / 100.

    Set per step (``step_update(steps done)``), so an epoch trains at ``lr * gamma ** (epochs after
    warm-up // step_size)``, as torch's StepLR stepped after each epoch, and a resumed trial needs
    only its step count.
    """
    from timm.scheduler import StepLRScheduler

    return StepLRScheduler(
        optimizer,
        decay_t=s.step_size * steps_per_epoch,
        decay_rate=s.gamma,
        warmup_t=round(s.warmup_epochs * steps_per_epoch),
        warmup_lr_init=s.lr / 100,
        warmup_prefix=True,
        t_in_epochs=False,
    )
