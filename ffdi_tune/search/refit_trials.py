"""Refit: the shipped members' configurations trained again on more labelled images, as Ray Tune
trials.

The final stage (``refit: {seeds: N}`` in an ensemble recipe) hands over one
:class:`~ffdi_tune.training.trial.RefitJob` per shipped member and seed: the member's settings with
a new seed (its schedule over its own epochs), stopped at its best epoch, to train on trainset plus
the *selection* part of valset (never the report part, which then still gives an honest
estimate). :func:`run_refits` runs them
as one Tune experiment (every job once, no scheduler: a refit is not a search) beside the search's
rounds, each trial mirrored into an MLflow child run of the search (``ffdi.role=refit``,
``ffdi.refit_of=<member's run>``) with its per-epoch training metrics and its ``checkpoint/best.pt``
(its last epoch's weights, of the kind the member kept). A refit the deadline or a fault cut
short is left out: its member keeps the weights the search trained.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
from ray import tune

from ffdi_tune import tracking
from ffdi_tune.config import SearchConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.search.cluster import connect, ray_address, trial_resources
from ffdi_tune.search.trainable import prepare_worker
from ffdi_tune.tracking import Tracker
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import BEST_FILE, Refit, RefitJob, train_trial

__all__ = ["run_refits", "RefitRuns"]


def _refit_trainable(
    config: dict[str, Any],
    data: dict,
    val_names: tuple[str, ...],
    augment_sets: dict,
    cpus: float,
    use_gpu: bool,
    deadline,
) -> None:
    """One refit trial: train the job's settings on trainset plus ``val_names``, reporting each
    epoch with its checkpoint."""
    device = prepare_worker(cpus, use_gpu)
    job = config["job"]

    def report(metrics: dict[str, float], folder: Path) -> None:
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(str(folder)))

    train_trial(
        TrainSettings.model_validate(job["settings"]),
        DataConfig.model_validate(data),
        report,
        augment_sets=augment_sets,
        device=device,
        robust_val=None,
        deadline=deadline,
        refit=Refit(tuple(val_names), job["kind"], job["epochs"]),
    )


class RefitRuns(tune.Callback):
    """Mirror refit trials into MLflow child runs of the search, from the driver."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_id: str):
        self.tracker, self.experiment_id, self.parent_id = tracker, experiment_id, parent_id
        self.run_ids: dict[str, str] = {}

    def _run(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            job = trial.config["job"]
            params = {
                **job["settings"],
                "refit_of": job["member"],
                "refit_epochs": job["epochs"],
                "refit_images": "train+select",
            }
            self.run_ids[trial.trial_id] = self.tracker.trial_run(
                self.experiment_id,
                self.parent_id,
                trial.trial_id,
                params,
                run_name=f"refit-{trial.trial_id}",
                role="refit",
            )
            self.tracker.set_tags(self.run_ids[trial.trial_id], {tracking.REFIT_OF: job["member"]})
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keys = ("train_loss", "lr", "epoch_time_s", "train_images_per_s")
        metrics = {k: result[k] for k in keys if k in result}
        self.tracker.log_metrics(self._run(trial), metrics, step=int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self.tracker.set_tags(run_id, {tracking.EPOCHS_RUN: str(epochs)})
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                if (Path(folder) / BEST_FILE).is_file():
                    self.tracker.log_artifact(run_id, Path(folder) / BEST_FILE, "checkpoint")
        self.tracker.finish(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.finish(self._run(trial), "FAILED")


def _tuner(cfg: SearchConfig, jobs, names, data, resources, mirror, deadline, storage):
    """One Tune experiment of every job (a grid over them), ``names`` shared through the object
    store rather than copied into each trial's config."""
    trainable = tune.with_resources(
        tune.with_parameters(
            _refit_trainable,
            data=data.model_dump(),
            val_names=tuple(names),
            augment_sets=cfg.augment_sets,
            cpus=resources["cpu"],
            use_gpu=resources["gpu"] > 0,
            deadline=deadline,
        ),
        resources,
    )
    return tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search([asdict(job) for job in jobs])},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.search.max_concurrent),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-refit-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,
            verbose=0,
            callbacks=[mirror],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        ),
    )


def run_refits(
    cfg: SearchConfig,
    jobs: list[RefitJob],
    val_names: tuple[str, ...],
    data: DataConfig,
    tracker: Tracker,
    parent_id: str,
    storage: str,
    *,
    address: str | None = None,
    deadline: float | None = None,
    echo=print,
) -> dict[str, list[str]]:
    """Train every job as a Tune trial on trainset plus ``val_names``; member run id -> the run
    ids of its refits that trained all their epochs and kept the member's kind of weights (a member
    none of whose refits did is left out)."""
    if deadline is not None and time.time() >= deadline:
        echo("refit: skipped, the time budget has no time left for it; the search's models ship")
        return {}
    started_ray = not ray.is_initialized()
    if started_ray:
        connect(ray_address(address or cfg.address))
    try:
        experiment_id = tracker.experiment_id(cfg.name, create=False)
        mirror = RefitRuns(tracker, experiment_id, parent_id)
        resources = trial_resources(cfg)
        tuner = _tuner(cfg, jobs, val_names, data, resources, mirror, deadline, storage)
        echo(f"refit: {len(jobs)} trial(s) on trainset + the selection part of valset")
        grid = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    done: dict[str, list[str]] = {}
    for result in grid:
        job, metrics = result.config["job"], result.metrics or {}
        finished = metrics.get("epoch", 0) == job["epochs"]
        if result.error is None and finished and metrics.get("weights_kept") == job["kind"]:
            run_id = _refit_run_id(tracker, mirror, experiment_id, parent_id, metrics["trial_id"])
            if run_id:
                done.setdefault(job["member"], []).append(run_id)
    return done


def _refit_run_id(tracker: Tracker, mirror: RefitRuns, experiment_id: str, parent: str, trial: str):
    """The MLflow run of refit trial ``trial``: as the driver's mirror made it, else (the mirror
    ran elsewhere: a Ray Client connection runs Tune on the cluster) found by its tags."""
    if trial in mirror.run_ids:
        return tracker.resolve(mirror.run_ids[trial])
    return tracker.child_run_id(experiment_id, parent, trial)
