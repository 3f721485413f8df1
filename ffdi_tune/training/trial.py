"""Train one trial: a plain function, callable without Ray or MLflow.

:func:`train_trial` builds the trial (:mod:`~ffdi_tune.training.state`), runs its epochs
(:mod:`~ffdi_tune.training.epoch`) and hands each epoch's metrics and checkpoint folder
(:mod:`~ffdi_tune.training.checkpoint`: ``best.pt`` and ``last.pt``) to a ``report`` callback; the
search runner forwards them to ``ray.tune.report``, tests collect them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ffdi_tune.data.perturb import RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.training.checkpoint import (
    BEST_FILE,
    LAST_FILE,
    STAND_IN_FILE,
    Reporter,
    keep_if_best,
    report_checkpoint,
    restore,
)
from ffdi_tune.training.epoch import run_epoch
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.state import Refit, RefitJob, build_trial_state

# with what a caller needs: the reporter's type, the files of the folders it is handed, a refit
__all__ = ["train_trial", "Reporter", "BEST_FILE", "LAST_FILE", "Refit", "RefitJob"]


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
    refit: Refit | None = None,
) -> dict[str, Any]:
    """Train ``settings.epochs`` epochs, reporting after each; return the best epoch's metrics.

    ``resume_from`` is a checkpoint folder written by an earlier call; training continues after its
    epoch. ``started_at`` (a ``time.perf_counter()`` value) is when the caller began the trial, for
    the ``time_to_first_batch_s`` figure. ``robust_val`` (on by default, as in YAML; None or
    ``enabled=False`` turns it off) adds the perturbed-valset metrics; ``metric`` may then be
    ``val_robust_auc`` or ``val_worst_auc``. ``val_names`` limits validation to those valset images
    (the search passes its selection part, see :mod:`ffdi_tune.data.holdout`); the others are never
    read. ``deadline`` (a ``time.time()`` value) ends training at the first batch past it; the epoch
    it cuts is neither scored nor saved, the epochs before it stay. ``refit`` trains on trainset
    plus the valset images it names instead, scores nothing, stops after its ``epochs`` and keeps
    each epoch (best.pt then holds the last one's weights, of the refit's kind).
    """
    started_at = time.perf_counter() if started_at is None else started_at
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = build_trial_state(
        settings, data, metric, augment_sets, device, started_at, robust_val, val_names, refit
    )
    if resume_from is not None:
        restore(state, resume_from)
    last = refit.epochs if refit is not None and refit.epochs else settings.epochs
    stand_in = resume_from is not None and (Path(resume_from) / STAND_IN_FILE).exists()
    if stand_in and state.epoch >= last and state.last_metrics:
        # resumed from a stand-in after its last epoch (its driver died before Tune recorded the
        # trial's end): that epoch is reported again, so that the search records where it ended
        report_checkpoint(state, state.last_metrics, report)
    for epoch in range(state.epoch + 1, last + 1):
        metrics = run_epoch(state, epoch, deadline)
        if metrics is None:
            break
        state.epoch = epoch
        keep_if_best(state, metrics)
        report_checkpoint(state, metrics, report)
    return state.best_metrics
