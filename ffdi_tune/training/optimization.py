"""How a trial learns: timm's optimizer (with a head learning-rate multiplier), the step or cosine
schedule with warm-up, MixUp / CutMix, and the AMP precision; factories from settings, no training
loop."""

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


def make_mixup(settings: TrainSettings):
    """timm's ``Mixup`` for setting ``mix`` (with the trial's label smoothing), or None."""
    if settings.mix == "none":
        return None
    from timm.data import Mixup

    mixup_on = settings.mix in ("mixup", "mixup_or_cutmix")
    cutmix_on = settings.mix in ("cutmix", "mixup_or_cutmix")
    return Mixup(
        mixup_alpha=settings.mixup_alpha if mixup_on else 0.0,
        cutmix_alpha=settings.cutmix_alpha if cutmix_on else 0.0,
        switch_prob=0.5,
        label_smoothing=settings.label_smoothing,
        num_classes=2,
    )


def classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The model's new 2-class head."""
    return getattr(model, "backbone", model).get_classifier()  # through the SRM wrapper


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """timm's optimizer; with ``head_lr_mult`` the new classifier's groups carry an ``lr_scale``.

    timm's schedulers multiply a group's lr by its ``lr_scale``; the weight-decay split (none on
    biases and norms) is timm's own.
    """
    from timm.optim import create_optimizer_v2

    kwargs = {
        "opt": settings.optimizer,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "momentum": settings.momentum,
    }
    if settings.head_lr_mult == 1.0:
        return create_optimizer_v2(model, **kwargs)

    def groups(m: torch.nn.Module) -> list[dict[str, Any]]:
        return _head_scaled_groups(m, settings.weight_decay, settings.head_lr_mult)

    return create_optimizer_v2(model, param_group_fn=groups, **kwargs)


def _head_scaled_groups(
    model: torch.nn.Module, weight_decay: float, head_lr_mult: float
) -> list[dict[str, Any]]:
    """timm's parameter groups (decayed / not decayed when ``weight_decay`` is set), each split in
    its body part and its classifier part; the classifier parts carry ``lr_scale=head_lr_mult``."""
    from timm.optim import param_groups_weight_decay

    head = {id(p) for p in classifier(model).parameters()}
    base = (
        param_groups_weight_decay(model, weight_decay)
        if weight_decay
        else [{"params": list(model.parameters())}]
    )
    groups = []
    for group in base:
        for in_head in (False, True):
            params = [p for p in group["params"] if (id(p) in head) == in_head]
            if params:
                scale = {"lr_scale": head_lr_mult} if in_head else {}
                groups.append({**group, "params": params} | scale)
    return groups


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int):
    """timm's schedule of ``settings.schedule``, counted in optimizer steps, after
    ``warmup_epochs`` of linear warm-up from lr / 100.

    Set per step (``step_update(steps done)``), so a resumed trial needs only its step count.
    ``step``: an epoch trains at ``lr * gamma ** (epochs after warm-up // step_size)``, as torch's
    StepLR stepped after each epoch. ``cosine``: half a cosine from ``lr`` after the warm-up to
    ``min_lr`` at the end of the trial's last epoch.
    """
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    warmup = {
        "warmup_t": round(settings.warmup_epochs * steps_per_epoch),
        "warmup_lr_init": settings.lr / 100,
        "warmup_prefix": True,
        "t_in_epochs": False,
    }
    if settings.schedule == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, settings.epochs * steps_per_epoch - warmup["warmup_t"]),
            lr_min=settings.min_lr,
            **warmup,
        )
    return StepLRScheduler(
        optimizer,
        decay_t=settings.step_size * steps_per_epoch,
        decay_rate=settings.gamma,
        **warmup,
    )
