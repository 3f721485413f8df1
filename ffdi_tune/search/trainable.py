"""One Ray Tune trial: a trial's settings from its config, then :func:`train_trial` reporting each
epoch (and its checkpoint) to Tune, tagged with where it ran and what it started from.

A trial continues from a checkpoint when it has one: its own (a retry, a resumed search) or, for a
trial that trains another further, that trial's. It runs in a (possibly reused) worker process.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from ffdi_tune import tracking
from ffdi_tune.config import SearchConfig
from ffdi_tune.data.holdout import Holdout
from ffdi_tune.data.perturb import RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.models.weights import resolve_weights
from ffdi_tune.search.searcher import LiveBudget
from ffdi_tune.search.space import (
    CONTINUE_FROM_KEY,
    CONTINUED_TRIAL_KEY,
    DEFAULT_RECIPE_KEY,
    trial_settings,
)
from ffdi_tune.training.placement import augment_placement
from ffdi_tune.training.trial import train_trial

__all__ = ["make_trainable", "prepare_worker"]


def _trainable(
    config: dict[str, Any],
    fixed: dict,
    data: dict,
    metric: str,
    augment_sets: dict,
    cpus: float,
    use_gpu: bool,
    robust_val: dict | None = None,
    val_names: tuple[str, ...] | None = None,
    deadline: float | None = None,
    system_metrics_s: float | None = None,
) -> None:
    """One Ray Tune trial. Runs in a (possibly reused) worker process; with ``system_metrics_s``,
    each report also carries the machine's samples taken every that many seconds."""
    started = time.perf_counter()
    device = prepare_worker(cpus, use_gpu)
    settings = trial_settings(fixed, config)
    where = _where(config, settings, augment_sets, device)
    sampler = tracking.SystemSampler(system_metrics_s) if system_metrics_s else None

    def report(metrics: dict[str, float], folder: Path) -> None:
        system = sampler.report_entry() if sampler else {}
        tune.report(
            {**metrics, **where, **system}, checkpoint=tune.Checkpoint.from_directory(str(folder))
        )

    resume_dir = _checkpoint_to_resume(config)
    try:
        with sampler or nullcontext():
            train_trial(
                settings,
                DataConfig.model_validate(data),
                report,
                metric=metric,
                augment_sets=augment_sets,
                resume_from=resume_dir,
                device=device,
                started_at=started,
                robust_val=RobustValConfig.model_validate(robust_val) if robust_val else None,
                val_names=val_names,
                deadline=deadline,
            )
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


def prepare_worker(cpus: float, use_gpu: bool) -> str:
    """Ready a (possibly reused) worker process for a trial; the device it trains on."""
    # quiet: Ray logs a line per checkpoint otherwise
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # A reused worker keeps process state: reset what a trial must not inherit.
    torch.set_num_threads(max(1, int(cpus)))
    if use_gpu and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def _where(config: dict[str, Any], settings, augment_sets: dict, device: str) -> dict[str, Any]:
    """What every report also says: which node ran the epoch, where augmentation ran and which
    weights the trial started from (as this node resolved them); the driver tags the trial's run
    with them."""
    weights = resolve_weights(settings.backbone, settings.pretrained)
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "augment_on": augment_placement(settings, augment_sets, torch.device(device)),
        "weights_source": weights.source,
        "weights_sha256": weights.sha256,
        "epochs_planned": settings.epochs,
        "default_recipe": bool(config.get(DEFAULT_RECIPE_KEY)),
        "continued_from": config.get(CONTINUED_TRIAL_KEY),
    }


def _checkpoint_to_resume(config: dict[str, Any]) -> Path | None:
    """A local copy of the checkpoint the trial continues from: its own (a retry or a resumed
    search), else the one of the trial it trains further; None for a fresh trial."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and config.get(CONTINUE_FROM_KEY):
        checkpoint = tune.Checkpoint(config[CONTINUE_FROM_KEY])
    if checkpoint is None:
        return None
    resume_dir = Path(tempfile.mkdtemp(prefix="ffdi-resume-"))
    checkpoint.to_directory(str(resume_dir))
    return resume_dir


def make_trainable(
    cfg: SearchConfig, data: DataConfig, holdout: Holdout, resources: dict, live: LiveBudget | None
):
    """The trainable of ``cfg``'s trials: :func:`_trainable` with the search's fixed arguments and
    each trial's resources."""
    return tune.with_resources(
        tune.with_parameters(
            _trainable,
            fixed=cfg.train.model_dump(),
            data=data.model_dump(),
            metric=cfg.search.metric,
            augment_sets=cfg.augment_sets,
            cpus=resources["cpu"],
            use_gpu=resources["gpu"] > 0,
            robust_val=cfg.robust_val.model_dump(mode="json"),
            val_names=holdout.select_names,
            deadline=live.budget.end_time() if live else None,
            system_metrics_s=(
                cfg.tracking.system_metrics_interval_s if cfg.tracking.system_metrics else None
            ),
        ),
        resources,
    )
