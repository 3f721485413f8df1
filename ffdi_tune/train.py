"""Train one trial: a plain function, callable without Ray or MLflow.

:func:`train_trial` runs the epochs and hands each epoch's metrics and checkpoint folder to a
``report`` callback (the search runner forwards them to ``ray.tune.report``; tests collect them).
A checkpoint folder holds ``last.pt`` (full state, to resume) and ``best.pt`` (the weights that
scored best on the search metric so far, with what prediction needs: backbone, input mode,
training and evaluation size, normalisation and the trial's settings; with ``ema_decay`` these
are the EMA weights, which are also the ones evaluated). Both load with
``torch.load(..., weights_only=True)``.

Each epoch scores valset (``val_auc``...) and, when ``robust_val`` is on, its perturbed copy
(``val_robust_auc``, and ``val_worst_auc``, the lower of the two; see :mod:`ffdi_tune.perturb`).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ffdi_tune.augment import AugmentParams, BatchFlips, batch_augment, build_augment, device_augment, has_device_form
from ffdi_tune.config import METRIC_MODES, ROBUST_METRICS, DataConfig, RobustValConfig, TrainSettings
from ffdi_tune.data import cache_dir_of, load_images, read_split, to_model_input, train_batches
from ffdi_tune.errors import ConfigError
from ffdi_tune.metrics import binary_metrics, roc_auc
from ffdi_tune.models import create_model, resolve_weights
from ffdi_tune.perturb import Perturber
from ffdi_tune.inference import view_log_odds

__all__ = ["train_trial", "augment_placement", "augmenters", "loader_workers", "Reporter", "BEST_FILE", "LAST_FILE", "EPOCH_METRICS"]

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
EPOCH_METRICS = (
    "val_auc", "val_tpr_at_fpr_0.001", "val_acc", "val_loss",
    "train_loss", "lr", "epoch_time_s", "train_images_per_s", "val_robust_auc", "val_worst_auc",
)

# report(metrics, checkpoint_dir) is called once per epoch; the folder is deleted after it returns.
Reporter = Callable[[dict[str, float], Path], None]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _make_mixup(s: TrainSettings):
    if s.mix == "none":
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=s.mixup_alpha if s.mix in ("mixup", "mixup_or_cutmix") else 0.0,
        cutmix_alpha=s.cutmix_alpha if s.mix in ("cutmix", "mixup_or_cutmix") else 0.0,
        switch_prob=0.5, label_smoothing=s.label_smoothing, num_classes=2,
    )


def _train_step(model, optimizer, scaler, x, y, mixup, label_smoothing: float, amp_dtype) -> float:
    """One optimiser step on a normalised batch; returns the batch loss."""
    if mixup is not None:
        x, y_soft = mixup(x, y)
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(x)
    if mixup is not None:
        loss = torch.sum(-y_soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    else:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def _classifier(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "backbone", model).get_classifier()  # through the SRM wrapper


def _make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """timm's optimizer; with ``head_lr_mult`` the new classifier's groups carry an ``lr_scale``.

    timm's schedulers multiply a group's lr by its ``lr_scale``; the weight-decay split (none on
    biases and norms) is timm's own.
    """
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    kwargs = {"opt": s.optimizer, "lr": s.lr, "weight_decay": s.weight_decay, "momentum": s.momentum}
    if s.head_lr_mult == 1.0:
        return create_optimizer_v2(model, **kwargs)

    def groups(m: torch.nn.Module) -> list[dict[str, Any]]:
        head = {id(p) for p in _classifier(m).parameters()}
        base = param_groups_weight_decay(m, s.weight_decay) if s.weight_decay else [{"params": list(m.parameters())}]
        out = []
        for group in base:
            for in_head in (False, True):
                params = [p for p in group["params"] if (id(p) in head) == in_head]
                if params:
                    out.append({**group, "params": params} | ({"lr_scale": s.head_lr_mult} if in_head else {}))
        return out

    return create_optimizer_v2(model, param_group_fn=groups, **kwargs)


def _make_scheduler(optimizer: torch.optim.Optimizer, s: TrainSettings, steps_per_epoch: int):
    """StepLR counted in optimizer steps, after ``warmup_epochs`` of linear warm-up from lr / 100.

    Set per step (``step_update(steps done)``), so an epoch trains at ``lr * gamma ** (epochs after
    warm-up // step_size)``, as torch's StepLR stepped after each epoch, and a resumed trial needs
    only its step count.
    """
    from timm.scheduler import StepLRScheduler

    return StepLRScheduler(optimizer, decay_t=s.step_size * steps_per_epoch, decay_rate=s.gamma,
                           warmup_t=round(s.warmup_epochs * steps_per_epoch), warmup_lr_init=s.lr / 100,
                           warmup_prefix=True, t_in_epochs=False)


def augment_placement(s: TrainSettings, augment_sets: dict[str, list[dict]] | None,
                      device: torch.device) -> Literal["device", "gather", "loader"]:
    """Where the trial's augmentation set runs.

    ``device``: whole batches on the training device (the flips sets on a GPU; sets with a kornia
    form when ``device_augment`` allows). ``gather``: the flips sets on a CPU, drawn per image as
    a batch is gathered from the decode cache. ``loader``: torchvision, image by image, in the
    DataLoader's workers when ``data.num_workers`` asks for them.
    """
    user = any(part in (augment_sets or {}) for part in s.augment.split("+"))
    if not user and batch_augment(s.augment) is not None:
        return "device" if device.type != "cpu" else "gather"
    wants_device = s.device_augment == "on" or (s.device_augment == "auto" and device.type == "cuda")
    return "device" if wants_device and has_device_form(s.augment, augment_sets) else "loader"


def loader_workers(num_workers: int | str, where: str, device: torch.device) -> int:
    """DataLoader processes for the per-image path (``where == "loader"``), else none.

    ``auto``: on a GPU trial all but one of the CPU threads the trial has (the search gives each
    trial as many as its ``resources.cpu``), so augmentation keeps up with the GPU; on a CPU trial
    none, since worker processes would take cores from the model.
    """
    if where != "loader":
        return 0
    if num_workers != "auto":
        return int(num_workers)
    return max(1, torch.get_num_threads() - 1) if device.type == "cuda" else 0


class Augmenters(NamedTuple):
    """The trial's augmentation, in the one place :func:`augment_placement` chose (the others None)."""

    where: str
    on_device: Callable[[torch.Tensor], torch.Tensor] | None
    while_gathering: BatchFlips | None
    per_image: Callable[[torch.Tensor], torch.Tensor] | None


def augmenters(s: TrainSettings, augment_sets: dict[str, list[dict]] | None, device: torch.device) -> Augmenters:
    """The trial's set, built for the place :func:`augment_placement` picks."""
    where = augment_placement(s, augment_sets, device)
    flips = batch_augment(s.augment)
    if where == "gather":
        return Augmenters(where, None, flips, None)
    if where == "device":
        batched = flips if flips is not None else device_augment(s.augment, s.img_size).to(device)
        return Augmenters(where, batched, None, None)
    params = AugmentParams(jpeg_quality=s.jpeg_quality, jpeg_p=s.jpeg_p)
    return Augmenters(where, None, None, build_augment(s.augment, s.img_size, augment_sets, params=params))


def train_trial(
    settings: TrainSettings,
    data: DataConfig,
    report: Reporter,
    *,
    metric: str = "val_auc",
    augment_sets: dict[str, list[dict]] | None = None,
    resume_from: Path | None = None,
    device: torch.device | str | None = None,
    started_at: float | None = None,
    robust_val: RobustValConfig | None = RobustValConfig(),
    val_names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Train ``settings.epochs`` epochs, reporting after each; return the best epoch's metrics.

    ``resume_from`` is a checkpoint folder written by an earlier call; training continues after its
    epoch. ``started_at`` (a ``time.perf_counter()`` value) is when the caller began the trial, for
    the ``time_to_first_batch_s`` figure. ``robust_val`` (on by default, as in YAML; None or
    ``enabled=False`` turns it off) adds the perturbed-valset metrics; ``metric`` may then be
    ``val_robust_auc`` or ``val_worst_auc``. ``val_names`` limits validation to those valset images
    (the search passes its selection part, see :mod:`ffdi_tune.holdout`); the others are never read.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    s = settings
    robust_on = robust_val is not None and robust_val.enabled
    if metric in ROBUST_METRICS and not robust_on:
        raise ConfigError(f"metric {metric} is scored on the perturbed valset, but robust_val is off; "
                          "enable robust_val or use val_auc")
    seed = 0 if s.seed is None else s.seed  # a search gives every trial its own (space.trial_seed)
    _seed_everything(seed)
    higher_is_better = METRIC_MODES[metric] == "max"

    weights = resolve_weights(s.backbone, s.pretrained)
    model = create_model(s.backbone, weights, s.drop_rate, input_mode=s.input,
                         drop_path_rate=s.drop_path_rate).to(device)
    channels_last = device.type == "cuda" if s.channels_last == "auto" else bool(s.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device)
    amp_dtype = _amp_dtype(s.amp, device)
    # The compiled module shares the model's parameters; checkpoints keep the plain state dict.
    step_model = torch.compile(model) if s.compile else model

    from timm.utils import ModelEmaV3

    optimizer = _make_optimizer(model, s)
    ema = ModelEmaV3(model, decay=s.ema_decay) if s.ema_decay else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    mixup = _make_mixup(s)

    train_split, val_split = read_split(data, "train"), read_split(data, "val")
    if val_names is not None:  # the search's selection part: the report part is never read here
        val_split = val_split.only(val_names)
    cache_dir = cache_dir_of(data)
    train_images = load_images(train_split, s.img_size, cache_dir=cache_dir)
    # Validation (and best.pt's prediction) may run at a larger side than training.
    val_images = load_images(val_split, s.eval_size, cache_dir=cache_dir)
    robust_images = (load_images(val_split, s.eval_size, cache_dir=cache_dir, perturb=Perturber(robust_val))
                     if robust_on else None)
    scheduler = _make_scheduler(optimizer, s, len(train_images) // min(s.batch_size, len(train_images)))
    where, on_device, while_gathering, per_image = augmenters(s, augment_sets, device)
    workers = loader_workers(data.num_workers, where, device)
    generator = torch.Generator()

    start_epoch, best_value, best_metrics, step = 1, None, {}, 0
    best_state: dict[str, Any] | None = None
    if resume_from is not None:
        state = torch.load(Path(resume_from) / LAST_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        start_epoch, best_value, step = state["epoch"] + 1, state["best_value"], state["step"]
        best_metrics = dict(state["best_metrics"])
        best_state = torch.load(Path(resume_from) / BEST_FILE, map_location="cpu", weights_only=True)

    first_batch_s = None
    for epoch in range(start_epoch, s.epochs + 1):
        torch.manual_seed(seed * 1000 + epoch)
        generator.manual_seed(seed * 1000 + epoch)
        model.train()
        t0 = time.perf_counter()
        scheduler.step_update(step)
        lr = optimizer.param_groups[0]["lr"]  # the body's (a head group comes after it)
        total_loss, seen = 0.0, 0
        for batch, target in train_batches(train_images, train_split.targets, s.batch_size, generator, per_image,
                                           while_gathering, workers, pin_memory=device.type == "cuda"):
            if on_device is not None:
                batch = on_device(batch.to(device, non_blocking=True))
            scheduler.step_update(step)
            x = to_model_input(batch, mean, std, device, channels_last)
            loss = _train_step(step_model, optimizer, scaler, x, target.to(device, non_blocking=True), mixup,
                               s.label_smoothing, amp_dtype)
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            total_loss += loss * len(batch)
            seen += len(batch)
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - started_at
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t0
        train_loss = total_loss / max(seen, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"train_loss became {train_loss} at epoch {epoch}; lower lr or turn off AMP")

        eval_model = ema.module if ema is not None else model
        score = view_log_odds(eval_model, val_images, mean, std, ["identity"], s.batch_size * 2, amp_dtype,
                              channels_last)[0]
        if not np.isfinite(score).all():
            raise FloatingPointError(f"the model's outputs became NaN at epoch {epoch}; lower lr or turn off AMP")
        metrics = binary_metrics(val_split.targets, score)
        if robust_images is not None:
            robust = view_log_odds(eval_model, robust_images, mean, std, ["identity"], s.batch_size * 2,
                                   amp_dtype, channels_last)[0]
            metrics["val_robust_auc"] = roc_auc(val_split.targets, robust)
            metrics["val_worst_auc"] = min(metrics["val_auc"], metrics["val_robust_auc"])
        metrics.update(
            epoch=epoch, train_loss=train_loss, lr=lr, epoch_time_s=time.perf_counter() - t0,
            train_images_per_s=seen / max(train_time, 1e-9),
        )
        if first_batch_s is not None:
            metrics["time_to_first_batch_s"] = first_batch_s
        value = metrics[metric]
        if best_value is None or (value > best_value if higher_is_better else value < best_value):
            best_value, best_metrics = value, dict(metrics)
            best_state = {
                # a copy: on a CPU .cpu() would alias the live weights, and later epochs would overwrite "best"
                "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in eval_model.state_dict().items()},
                "backbone": s.backbone, "input": s.input, "img_size": s.img_size, "eval_img_size": s.eval_size,
                "mean": [float(v) for v in mean.cpu()], "std": [float(v) for v in std.cpu()],
                "settings": s.model_dump(), "weights_source": weights.source, "weights_sha256": weights.sha256,
                "epoch": epoch, "metric": metric, "metrics": dict(metrics),
            }
        with tempfile.TemporaryDirectory(prefix="ffdi-ckpt-") as tmp:
            torch.save(best_state, Path(tmp) / BEST_FILE)
            last = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                "best_value": best_value, "best_metrics": best_metrics,
            }
            if ema is not None:
                last["ema"] = ema.state_dict()
            torch.save(last, Path(tmp) / LAST_FILE)
            report(metrics, Path(tmp))
    return best_metrics
