"""Train one trial: a plain function, callable without Ray or MLflow.

:func:`train_trial` runs the epochs and hands each epoch's metrics and checkpoint folder to a
``report`` callback (the search runner forwards them to ``ray.tune.report``; tests collect them).
A checkpoint folder holds ``last.pt`` (full state, to resume) and ``best.pt`` (the weights that
scored best on the search metric so far, with what prediction needs: backbone, input mode,
training and evaluation size, normalisation, the trial's settings and where its pretrained weights
came from; with ``ema_decay`` these are the EMA weights, which are also the ones evaluated). Both
load with ``torch.load(..., weights_only=True)``.

Each epoch scores valset (``val_auc``...) and, when ``robust_val`` is on, its perturbed copy
(``val_robust_auc``, and ``val_worst_auc``, the lower of the two; see
:mod:`ffdi_tune.data.perturb`). It also logs how it ran: ``data_wait_share`` (the share of the
epoch's training time the model waited for batches) and, on a GPU, ``peak_accelerator_memory_mb``.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ffdi_tune.data.layout import (
    Split,
    cache_dir_of,
    load_images,
    read_split,
    to_model_input,
    train_batches,
)
from ffdi_tune.data.perturb import Perturber, RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import ConfigError
from ffdi_tune.models.factory import Weights, create_model, resolve_weights
from ffdi_tune.scoring.epoch_metrics import is_better, robust_metrics
from ffdi_tune.scoring.inference import view_log_odds
from ffdi_tune.scoring.metrics import binary_metrics, roc_auc
from ffdi_tune.training.optimization import amp_dtype, make_mixup, make_optimizer, make_scheduler
from ffdi_tune.training.placement import Augmenters, augmenters, loader_workers
from ffdi_tune.training.settings import TrainSettings

__all__ = ["train_trial", "Reporter", "BEST_FILE", "LAST_FILE"]

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"

# report(metrics, checkpoint_dir) is called once per epoch; the folder is deleted after it returns.
Reporter = Callable[[dict[str, float], Path], None]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _train_step(model, optimizer, scaler, x, y, mixup, label_smoothing: float, amp) -> float:
    """One optimiser step on a normalised batch; returns the batch loss."""
    if mixup is not None:
        x, y_soft = mixup(x, y)
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
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


class _BusyTime:
    """Time the training steps take: on a GPU from CUDA events (no sync per step), else by the
    clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list[tuple[Any, Any]] = []
        self.seconds = 0.0

    def start(self):
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            self.events.append((begin, end))
        else:
            self._t = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.events[-1][1].record()
        else:
            self.seconds += time.perf_counter() - self._t

    def total(self) -> float:
        """Seconds of work (call after the epoch's last step; on a GPU it synchronises once)."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(b.elapsed_time(e) for b, e in self.events) / 1000
        return self.seconds


@dataclass
class _Trial:
    """Everything one trial trains and scores with, built once by :func:`_build`."""

    s: TrainSettings
    metric: str
    device: torch.device
    seed: int
    weights: Weights
    model: torch.nn.Module
    step_model: torch.nn.Module  # the model, or its torch.compile'd twin (same parameters)
    ema: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    mixup: Any
    mean: torch.Tensor
    std: torch.Tensor
    amp: torch.dtype | None
    channels_last: bool
    train_split: Split
    val_split: Split
    train_images: torch.Tensor
    val_images: torch.Tensor
    robust_images: torch.Tensor | None
    augment: Augmenters
    workers: int
    started_at: float
    epoch: int = 0  # the last epoch done
    step: int = 0
    best_value: float | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, Any] | None = None
    first_batch_s: float | None = None

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


def _build(
    s: TrainSettings,
    data: DataConfig,
    metric: str,
    augment_sets,
    device,
    started_at: float,
    robust_val: RobustValConfig | None,
    val_names,
) -> _Trial:
    robust_on = robust_val is not None and robust_val.enabled
    if metric in robust_metrics() and not robust_on:
        raise ConfigError(
            f"metric {metric} is scored on the perturbed valset, but robust_val is off; "
            "enable robust_val or use val_auc"
        )
    seed = 0 if s.seed is None else s.seed  # a search gives every trial its own (space.trial_seed)
    _seed_everything(seed)
    weights = resolve_weights(s.backbone, s.pretrained)
    model = create_model(
        s.backbone, weights, s.drop_rate, input_mode=s.input, drop_path_rate=s.drop_path_rate
    ).to(device)
    channels_last = device.type == "cuda" if s.channels_last == "auto" else bool(s.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = model.pretrained_cfg
    amp = amp_dtype(s.amp, device)
    from timm.utils import ModelEmaV3

    optimizer = make_optimizer(model, s)
    train_split, val_split = read_split(data, "train"), read_split(data, "val")
    if val_names is not None:  # the search's selection part: the report part is never read here
        val_split = val_split.only(val_names)
    cache_dir = cache_dir_of(data)
    train_images = load_images(train_split, s.img_size, cache_dir=cache_dir)
    # Validation (and best.pt's prediction) may run at a larger side than training.
    val_images = load_images(val_split, s.eval_size, cache_dir=cache_dir)
    robust_images = (
        load_images(val_split, s.eval_size, cache_dir=cache_dir, perturb=Perturber(robust_val))
        if robust_on
        else None
    )
    augment = augmenters(s, augment_sets, device)
    return _Trial(
        s=s,
        metric=metric,
        device=device,
        seed=seed,
        weights=weights,
        model=model,
        step_model=torch.compile(model) if s.compile else model,
        ema=ModelEmaV3(model, decay=s.ema_decay) if s.ema_decay else None,
        optimizer=optimizer,
        scheduler=make_scheduler(
            optimizer, s, len(train_images) // min(s.batch_size, len(train_images))
        ),
        scaler=torch.amp.GradScaler("cuda", enabled=amp == torch.float16),
        mixup=make_mixup(s),
        mean=torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device),
        std=torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device),
        amp=amp,
        channels_last=channels_last,
        train_split=train_split,
        val_split=val_split,
        train_images=train_images,
        val_images=val_images,
        robust_images=robust_images,
        augment=augment,
        workers=loader_workers(data.num_workers, augment.where, device),
        started_at=started_at,
    )


def _restore(t: _Trial, folder: Path) -> None:
    """Continue after the epoch a checkpoint folder written by an earlier call holds."""
    state = torch.load(Path(folder) / LAST_FILE, map_location=t.device, weights_only=True)
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    if t.ema is not None and "ema" in state:
        t.ema.load_state_dict(state["ema"])
    t.epoch, t.best_value, t.step = state["epoch"], state["best_value"], state["step"]
    t.best_metrics = dict(state["best_metrics"])
    t.best_state = torch.load(Path(folder) / BEST_FILE, map_location="cpu", weights_only=True)


def _train_epoch(t: _Trial, epoch: int, deadline: float | None) -> dict[str, float] | None:
    """One pass over trainset; its figures, or None when ``deadline`` (a ``time.time()``) came."""
    s = t.s
    torch.manual_seed(t.seed * 1000 + epoch)
    generator = torch.Generator().manual_seed(t.seed * 1000 + epoch)
    if t.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.device)
    t.model.train()
    t0 = time.perf_counter()
    t.scheduler.step_update(t.step)
    lr = t.optimizer.param_groups[0]["lr"]  # the body's (a head group comes after it)
    total_loss, seen, busy = 0.0, 0, _BusyTime(t.device)
    batches = train_batches(
        t.train_images,
        t.train_split.targets,
        s.batch_size,
        generator,
        t.augment.per_image,
        t.augment.while_gathering,
        t.workers,
        pin_memory=t.device.type == "cuda",
    )
    for batch, target in batches:
        if deadline is not None and time.time() >= deadline:
            return None  # the search's time budget is spent: this epoch is not scored
        busy.start()
        if t.augment.on_device is not None:
            batch = t.augment.on_device(batch.to(t.device, non_blocking=True))
        t.scheduler.step_update(t.step)
        x = to_model_input(batch, t.mean, t.std, t.device, t.channels_last)
        loss = _train_step(
            t.step_model,
            t.optimizer,
            t.scaler,
            x,
            target.to(t.device, non_blocking=True),
            t.mixup,
            s.label_smoothing,
            t.amp,
        )
        t.step += 1
        if t.ema is not None:
            t.ema.update(t.model, step=t.step)
        busy.stop()
        total_loss += loss * len(batch)
        seen += len(batch)
        if t.first_batch_s is None:
            t.first_batch_s = time.perf_counter() - t.started_at
    working = busy.total()
    train_time = time.perf_counter() - t0
    train_loss = total_loss / max(seen, 1)
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"train_loss became {train_loss} at epoch {epoch}; lower lr or turn off AMP"
        )
    stats = {
        "epoch": epoch,
        "train_loss": train_loss,
        "lr": lr,
        "train_images_per_s": seen / max(train_time, 1e-9),
        "data_wait_share": min(1.0, max(0.0, 1 - working / max(train_time, 1e-9))),
        "_t0": t0,
    }
    if t.device.type == "cuda":
        stats["peak_accelerator_memory_mb"] = torch.cuda.max_memory_allocated(t.device) / 2**20
    if t.first_batch_s is not None:
        stats["time_to_first_batch_s"] = t.first_batch_s
    return stats


def _evaluate(t: _Trial, epoch: int) -> dict[str, float]:
    """The epoch's validation metrics on valset (its selection part in a search), and its perturbed
    copy."""
    t0 = time.perf_counter()
    batch = t.s.batch_size * 2
    score = view_log_odds(
        t.eval_model, t.val_images, t.mean, t.std, ["identity"], batch, t.amp, t.channels_last
    )[0]
    if not np.isfinite(score).all():
        raise FloatingPointError(
            f"the model's outputs became NaN at epoch {epoch}; lower lr or turn off AMP"
        )
    metrics = binary_metrics(t.val_split.targets, score)
    if t.robust_images is not None:
        robust = view_log_odds(
            t.eval_model,
            t.robust_images,
            t.mean,
            t.std,
            ["identity"],
            batch,
            t.amp,
            t.channels_last,
        )[0]
        metrics["val_robust_auc"] = roc_auc(t.val_split.targets, robust)
        metrics["val_worst_auc"] = min(metrics["val_auc"], metrics["val_robust_auc"])
    metrics["eval_time_s"] = time.perf_counter() - t0
    return metrics


def _keep_best(t: _Trial, metrics: dict[str, float]) -> None:
    if not is_better(t.metric, metrics[t.metric], t.best_value):
        return
    s = t.s
    t.best_value, t.best_metrics = metrics[t.metric], dict(metrics)
    t.best_state = {
        # a copy: on a CPU .cpu() would alias the live weights, and later epochs would overwrite
        # "best"
        "state_dict": {
            k: v.detach().to("cpu", copy=True) for k, v in t.eval_model.state_dict().items()
        },
        "backbone": s.backbone,
        "input": s.input,
        "img_size": s.img_size,
        "eval_img_size": s.eval_size,
        "mean": [float(v) for v in t.mean.cpu()],
        "std": [float(v) for v in t.std.cpu()],
        "settings": s.model_dump(),
        "weights_source": t.weights.source,
        "weights_sha256": t.weights.sha256,
        "epoch": metrics["epoch"],
        "metric": t.metric,
        "metrics": dict(metrics),
    }


def _save(t: _Trial, metrics: dict[str, float], report: Reporter) -> None:
    """Write best.pt and last.pt into a fresh folder and hand it to ``report`` with the metrics."""
    with tempfile.TemporaryDirectory(prefix="ffdi-ckpt-") as tmp:
        torch.save(t.best_state, Path(tmp) / BEST_FILE)
        last = {
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "epoch": t.epoch,
            "step": t.step,
            "best_value": t.best_value,
            "best_metrics": t.best_metrics,
        }
        if t.ema is not None:
            last["ema"] = t.ema.state_dict()
        torch.save(last, Path(tmp) / LAST_FILE)
        report(metrics, Path(tmp))


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
    deadline: float | None = None,
) -> dict[str, Any]:
    """Train ``settings.epochs`` epochs, reporting after each; return the best epoch's metrics.

    ``resume_from`` is a checkpoint folder written by an earlier call; training continues after its
    epoch. ``started_at`` (a ``time.perf_counter()`` value) is when the caller began the trial, for
    the ``time_to_first_batch_s`` figure. ``robust_val`` (on by default, as in YAML; None or
    ``enabled=False`` turns it off) adds the perturbed-valset metrics; ``metric`` may then be
    ``val_robust_auc`` or ``val_worst_auc``. ``val_names`` limits validation to those valset images
    (the search passes its selection part, see :mod:`ffdi_tune.data.holdout`); the others are never
    read. ``deadline`` (a ``time.time()`` value) ends training at the first batch past it; the epoch
    it cuts is neither scored nor saved, the epochs before it stay.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t = _build(settings, data, metric, augment_sets, device, started_at, robust_val, val_names)
    if resume_from is not None:
        _restore(t, resume_from)
    for epoch in range(t.epoch + 1, settings.epochs + 1):
        stats = _train_epoch(t, epoch, deadline)
        if stats is None:
            break
        metrics = _evaluate(t, epoch) | stats
        metrics["epoch_time_s"] = time.perf_counter() - metrics.pop("_t0")
        t.epoch = epoch
        _keep_best(t, metrics)
        _save(t, metrics, report)
    return t.best_metrics
