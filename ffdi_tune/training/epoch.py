"""One epoch of a trial: a training pass over trainset, then its scores on valset.

:func:`run_epoch` returns the epoch's metrics: the validation metrics of
:func:`~ffdi_tune.scoring.metrics.binary_metrics` on valset (its selection part in a search) and,
when ``robust_val`` is on, on its perturbed copy (``val_robust_auc``, and ``val_worst_auc``, the
lower of the two; see :mod:`ffdi_tune.data.perturb`); the training loss and learning rate; and how
the epoch ran: ``train_images_per_s``, ``data_wait_share`` (the share of the training time the model
waited for batches), ``eval_time_s``, ``epoch_time_s``, ``time_to_first_batch_s`` and, on a GPU,
``peak_accelerator_memory_mb``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ffdi_tune.data.loaders import to_model_input, train_batches
from ffdi_tune.scoring.epoch_metrics import is_better
from ffdi_tune.scoring.inference import view_log_odds
from ffdi_tune.scoring.metrics import binary_metrics, roc_auc
from ffdi_tune.scoring.tta import apply_view
from ffdi_tune.training.state import TrialState

__all__ = ["run_epoch", "evaluate"]


def run_epoch(state: TrialState, epoch: int, deadline: float | None) -> dict[str, float] | None:
    """Train epoch ``epoch`` and score it; None when ``deadline`` (a ``time.time()``) came first,
    the epoch then being neither finished nor scored."""
    generator = _start_epoch(state, epoch)
    started = time.perf_counter()
    state.scheduler.step_update(state.step)
    lr = state.optimizer.param_groups[0]["lr"]  # the body's (a head group comes after it)
    totals = _train_pass(state, generator, deadline)
    if totals is None:
        return None  # the search's time budget is spent: this epoch is not scored
    total_loss, seen, busy_s = totals
    train_s = time.perf_counter() - started
    _average(state, epoch, deadline)
    train_loss = total_loss / max(seen, 1)
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"train_loss became {train_loss} at epoch {epoch}; lower lr or turn off AMP"
        )
    train_stats = {
        "epoch": epoch,
        "train_loss": train_loss,
        "lr": lr,
        "train_images_per_s": seen / max(train_s, 1e-9),
        "data_wait_share": min(1.0, max(0.0, 1 - busy_s / max(train_s, 1e-9))),
        **_run_figures(state),  # the peak memory of training, before evaluation
    }
    metrics = (evaluate(state, epoch) if state.refit is None else _refit_kind(state)) | train_stats
    metrics["epoch_time_s"] = time.perf_counter() - started
    return metrics


def _average(state: TrialState, epoch: int, deadline: float | None = None) -> None:
    """Add the epoch's weights to the SWA average when the epoch is one of the last
    ``swa_epochs``; after the last, recompute the average's batch-norm statistics on trainset
    (skipped past ``deadline``: the average is then not scored, the epoch's own weights are)."""
    settings = state.settings
    if state.swa is None or epoch <= settings.epochs - settings.swa_epochs:
        return
    state.swa.update_parameters(state.model)
    if epoch == settings.epochs and (deadline is None or time.time() < deadline):
        torch.optim.swa_utils.update_bn(_plain_batches(state), state.swa, device=state.device)
        state.swa_ready = True


def _plain_batches(state: TrialState):
    """Trainset, unaugmented and normalised as the model sees it, in training-size batches."""
    images, size = state.splits.train_images, state.settings.batch_size
    crop = _crop(state, state.settings.img_size)
    for start in range(0, len(images), size):
        batch = to_model_input(
            images[start : start + size], state.mean, state.std, state.device, state.channels_last
        )
        yield apply_view("identity", batch, crop)  # cropped images: their centre square


def _crop(state: TrialState, side: int) -> int | None:
    """The square cut from the decoded images for the model (``resize: crop``), else None."""
    return side if state.settings.resize == "crop" else None


def _start_epoch(state: TrialState, epoch: int) -> torch.Generator:
    """Seed the epoch (its shuffling and augmentation) and reset the peak memory count; the
    generator that shuffles trainset."""
    torch.manual_seed(state.seed * 1000 + epoch)
    generator = torch.Generator().manual_seed(state.seed * 1000 + epoch)
    if state.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(state.device)
    state.model.train()
    return generator


def _train_pass(
    state: TrialState, generator: torch.Generator, deadline: float | None
) -> tuple[float, int, float] | None:
    """Every training batch once: (summed loss, images seen, seconds the steps worked), or None
    when ``deadline`` came before a batch."""
    splits, augment = state.splits, state.augmenters
    total_loss, seen, busy = 0.0, 0, _BusyTime(state.device)
    batches = train_batches(
        splits.train_images,
        splits.train_split.targets,
        state.settings.batch_size,
        generator,
        augment.per_image,
        augment.while_gathering,
        state.num_workers,
        pin_memory=state.device.type == "cuda",
        synth=state.synth,
        crop=_crop(state, state.settings.img_size),
    )
    for batch, target in batches:
        if deadline is not None and time.time() >= deadline:
            return None
        busy.start()
        loss = _train_step(state, batch, target)
        busy.stop()
        total_loss += loss * len(batch)
        seen += len(batch)
        if state.first_batch_s is None:
            state.first_batch_s = time.perf_counter() - state.started_at
    return total_loss, seen, busy.total()


def _train_step(state: TrialState, batch: torch.Tensor, target: torch.Tensor) -> float:
    """One optimizer step on a uint8 batch from the loader (augmented on the device when that is
    where augmentation runs); updates the EMA and returns the batch loss."""
    if state.augmenters.on_device is not None:
        batch = state.augmenters.on_device(batch.to(state.device, non_blocking=True))
    state.scheduler.step_update(state.step)
    x = to_model_input(batch, state.mean, state.std, state.device, state.channels_last)
    loss = _loss(state, x, target.to(state.device, non_blocking=True))
    state.optimizer.zero_grad(set_to_none=True)
    state.grad_scaler.scale(loss).backward()
    state.grad_scaler.step(state.optimizer)
    state.grad_scaler.update()
    state.step += 1
    if state.ema is not None:
        state.ema.update(state.model, step=state.step)
    return float(loss.detach())


def _loss(state: TrialState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch's loss: soft-target cross-entropy under MixUp / CutMix, else cross-entropy with
    the trial's label smoothing (logits in float32 either way)."""
    if state.mixup is not None:
        x, y_soft = state.mixup(x, y)
    with torch.autocast(x.device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
        logits = state.step_model(x)
    if state.mixup is not None:
        return torch.sum(-y_soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), y, label_smoothing=state.settings.label_smoothing)


def _run_figures(state: TrialState) -> dict[str, float]:
    """Peak accelerator memory of the epoch (on a GPU) and the trial's time to its first batch."""
    figures = {}
    if state.device.type == "cuda":
        figures["peak_accelerator_memory_mb"] = (
            torch.cuda.max_memory_allocated(state.device) / 2**20
        )
    if state.first_batch_s is not None:
        figures["time_to_first_batch_s"] = state.first_batch_s
    return figures


class _BusyTime:
    """Time the training steps take: from CUDA events on a GPU (no sync per step), else by clock."""

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
            self._started = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.events[-1][1].record()
        else:
            self.seconds += time.perf_counter() - self._started

    def total(self) -> float:
        """Seconds of work (call after the epoch's last step; on a GPU it synchronises once)."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(b.elapsed_time(e) for b, e in self.events) / 1000
        return self.seconds


def _refit_kind(state: TrialState) -> dict[str, float]:
    """A refit scores nothing: it keeps the kind of weights its search trial kept, once that kind
    exists (the SWA average only after the last epoch)."""
    wanted = state.refit.kind
    state.kept = wanted if wanted in state.kinds() else "raw"
    return {}


def evaluate(state: TrialState, epoch: int) -> dict[str, float]:
    """The validation metrics on valset (and its perturbed copy when robust_val is on) of the
    trial's weights: of each kind :meth:`TrialState.kinds` names (the raw ones; the EMA with
    ``ema_decay``; after the last epoch, the SWA average with ``swa_epochs``), keeping the best on
    the trial's metric (on a tie, the averaged one) in ``state.kept`` and adding ``val_auc_<kind>``
    of each when there are several. FloatingPointError on a NaN score."""
    started = time.perf_counter()
    kinds = state.kinds()
    scored = {kind: _scores(state, kind, epoch) for kind in kinds}
    state.kept = kinds[0]
    for kind in kinds[1:]:
        if not is_better(
            state.metric, scored[state.kept][state.metric], scored[kind][state.metric]
        ):
            state.kept = kind
    metrics = dict(scored[state.kept])
    if len(kinds) > 1:
        metrics |= {f"val_auc_{kind}": scored[kind]["val_auc"] for kind in kinds}
    metrics["eval_time_s"] = time.perf_counter() - started
    return metrics


def _scores(state: TrialState, kind: str, epoch: int) -> dict[str, float]:
    """The validation metrics of one kind of the trial's weights (``raw``, ``ema`` or ``swa``)."""
    model = state.weights_of(kind)
    targets = state.splits.val_split.targets
    score = _log_odds(state, model, state.splits.val_images)
    if not np.isfinite(score).all():
        raise FloatingPointError(
            f"the model's outputs became NaN at epoch {epoch}; lower lr or turn off AMP"
        )
    metrics = binary_metrics(targets, score)
    if state.splits.robust_images is not None:
        robust = _log_odds(state, model, state.splits.robust_images)
        metrics["val_robust_auc"] = roc_auc(targets, robust)
        metrics["val_worst_auc"] = min(metrics["val_auc"], metrics["val_robust_auc"])
    return metrics


def _log_odds(state: TrialState, model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """``model``'s log-odds of fake for ``images``: the identity view, in batches of twice the
    training batch."""
    return view_log_odds(
        model,
        images,
        state.mean,
        state.std,
        ["identity"],
        state.settings.batch_size * 2,
        state.amp_dtype,
        state.channels_last,
        _crop(state, state.settings.eval_size),
    )[0]
