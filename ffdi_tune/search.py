"""The search runner: Ray Tune + OptunaSearch (TPE) + ASHA, with MLflow tracking from the driver.

This is the only module that imports Ray. Trials run :func:`ffdi_tune.train.train_trial`; a Tune
callback on the driver mirrors every trial into MLflow (so workers need no tracking access and a
trial stopped by ASHA, which never returns from its last ``tune.report``, still gets a correct
final status).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
import torch
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from ffdi_tune.config import DataConfig, SearchConfig
from ffdi_tune.data import check_dataset, ensure_dataset
from ffdi_tune.errors import SearchError, SearchInterrupted
from ffdi_tune.models import check_pretrained
from ffdi_tune.report import param_importance, plot_param_importance, plot_search_history
from ffdi_tune.results import TrialRow, write_trials_csv
from ffdi_tune.space import CONDITIONAL_SEP, DefineByRun, trial_settings
from ffdi_tune.tracking import Tracker, resolve_tracking
from ffdi_tune.train import BEST_FILE, EPOCH_METRICS, train_trial

__all__ = ["SearchOutcome", "run_search", "search_dir"]

# Each epoch forces an experiment-state snapshot (num_to_keep=1); with epochs of seconds (the demo)
# Tune warns about it on every report, though a local snapshot costs milliseconds.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass
class SearchOutcome:
    name: str
    out_dir: Path
    storage_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    rows: list[TrialRow]
    trials_csv: Path
    wall_s: float
    data: DataConfig  # with the absolute root the trials used


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def search_dir(cfg: SearchConfig) -> tuple[str, Path]:
    """(Ray storage path, local output folder) of the search; the storage path may be a URI."""
    if _is_uri(cfg.search.storage):
        return cfg.search.storage, Path("runs") / cfg.name
    storage = Path(cfg.search.storage.removeprefix("file://")).expanduser().resolve()
    return str(storage), storage / cfg.name


def _trainable(config: dict[str, Any], fixed: dict, data: dict, metric: str, augment_sets: dict,
               cpus: float, use_gpu: bool) -> None:
    """One Ray Tune trial. Runs in a (possibly reused) worker process."""
    started = time.perf_counter()
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
    # A reused worker keeps process state: reset what a trial must not inherit.
    torch.set_num_threads(max(1, int(cpus)))
    if use_gpu and torch.cuda.is_available():
        torch.cuda.empty_cache()
    settings = trial_settings(fixed, config)

    def report(metrics: dict[str, float], folder: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    checkpoint = tune.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="ffdi-resume-"))
        checkpoint.to_directory(str(resume_dir))
    try:
        train_trial(settings, DataConfig.model_validate(data), report, metric=metric,
                    augment_sets=augment_sets, resume_from=resume_dir, device=device, started_at=started)
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


def _progress(trial, fixed: dict) -> tuple[int, int]:
    """(epochs run, epochs planned) of a Tune trial; fewer run than planned means ASHA stopped it."""
    return int((trial.last_result or {}).get("epoch", 0)), trial_settings(fixed, trial.config).epochs


class MlflowTrials(tune.Callback):
    """Mirror trials into MLflow child runs from the driver (picklable: Tune saves it for resume)."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_id: str, fixed: dict):
        self.tracker, self.experiment_id, self.parent_id, self.fixed = tracker, experiment_id, parent_id, fixed
        self.run_ids: dict[str, str] = {}

    def _run(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            params = trial_settings(self.fixed, trial.config).model_dump()
            params.update({k: v for k, v in trial.config.items() if CONDITIONAL_SEP in k})
            self.run_ids[trial.trial_id] = self.tracker.trial_run(
                self.experiment_id, self.parent_id, trial.trial_id, params, run_name=f"trial-{trial.trial_id}")
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: result[k] for k in (*EPOCH_METRICS, "time_to_first_batch_s") if k in result}
        self.tracker.log_metrics(self._run(trial), metrics, step=int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        epochs_run, planned = _progress(trial, self.fixed)
        self.tracker.set_tags(run_id, {"ffdi.stopped_early": str(epochs_run < planned).lower(),
                                       "ffdi.epochs_run": str(epochs_run)})
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                best = Path(folder) / BEST_FILE
                if best.is_file():
                    self.tracker.log_artifact(run_id, best, "checkpoint")
        self.tracker.finish(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        message = "trial failed"
        if trial.error_file and os.path.exists(trial.error_file):
            lines = [ln for ln in Path(trial.error_file).read_text(errors="replace").splitlines() if ln.strip()]
            message = lines[-1] if lines else message
        self.tracker.set_tags(run_id, {"ffdi.error": message[:5000]})
        self.tracker.finish(run_id, "FAILED")


def _trial_resources(cfg: SearchConfig) -> dict[str, float]:
    total = ray.cluster_resources()
    gpu = cfg.resources.gpu
    if gpu == "auto":
        gpu = 1.0 if total.get("GPU", 0) >= 1 else 0.0
    need = {"CPU": cfg.resources.cpu, "GPU": float(gpu)}
    for key, amount in need.items():
        if amount > total.get(key, 0.0) + 1e-9:
            raise SearchError(
                f"resources: a trial asks for {amount:g} {key}, but the Ray cluster has "
                f"{total.get(key, 0.0):g}; lower resources.{key.lower()} or add nodes"
            )
    return {"cpu": need["CPU"], "gpu": need["GPU"]}


def _rows(grid, run_ids: dict[str, str], fixed: dict, metric: str, mode: str) -> list[TrialRow]:
    """One row per trial of a finished (or interrupted) Tune run."""
    rows = []
    # ResultGrid keeps its results in the order of its analysis' trials; the Trial objects carry
    # the ids and statuses that the Results lack.
    for trial, result in zip(grid._experiment_analysis.trials, grid):
        history = result.metrics_dataframe
        best = math.nan
        if history is not None and metric in history:
            series = history[metric].dropna()
            if len(series):
                best = float(series.max() if mode == "max" else series.min())
        epochs_run, planned = _progress(trial, fixed)
        if result.error:
            status = "FAILED"
        elif trial.status not in ("TERMINATED", "ERROR"):
            status = "INTERRUPTED"  # pending, running or paused when the driver stopped
        else:
            status = "STOPPED" if epochs_run < planned else "FINISHED"
        rows.append(TrialRow(
            trial_id=trial.trial_id, run_id=run_ids.get(trial.trial_id, ""), status=status,
            best=best, epochs_run=epochs_run, params={k.split(CONDITIONAL_SEP)[0]: v for k, v in trial.config.items()},
            checkpoint=str(Path(result.checkpoint.path)) if result.checkpoint else "",
        ))
    return rows


def _make_tuner(cfg: SearchConfig, trainable, callback: MlflowTrials, storage_path: str, exp_path: str,
                resume: bool) -> tune.Tuner:
    if resume:
        # The restored run config brings back its pickled MlflowTrials, which finds the same
        # parent run and re-attaches to existing child runs by their ffdi.trial_id tag.
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    if cfg.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            metric=cfg.search.metric, mode=cfg.search.mode, time_attr="epoch",
            max_t=cfg.scheduler.max_epochs or cfg.max_epochs(), grace_period=cfg.scheduler.grace_period,
            reduction_factor=cfg.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    sampler = optuna.samplers.TPESampler(seed=cfg.search.seed, n_startup_trials=cfg.search.tpe_startup_trials)
    searcher = OptunaSearch(space=DefineByRun.from_config(cfg), metric=cfg.search.metric,
                            mode=cfg.search.mode, sampler=sampler)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=cfg.search.num_samples,
            max_concurrent_trials=cfg.search.max_concurrent, reuse_actors=cfg.search.reuse_actors),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=storage_path, verbose=1, callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures)),
    )


def _summarise(tracker: Tracker, experiment_id: str, parent_id: str, rows: list[TrialRow], metric: str,
               mode: str, trials_csv: Path, searched: list[str]) -> None:
    """Log the search's totals, best trial, history and parameter importance on the parent run."""
    finished = [r for r in rows if r.status != "FAILED" and not math.isnan(r.best)]
    tracker.log_metrics(parent_id, {"trials_finished": len(finished), "trials_failed": len(rows) - len(finished)}, 0)
    tracker.log_artifact(parent_id, trials_csv)
    if not finished:
        return
    best = max(finished, key=lambda r: r.best if mode == "max" else -r.best)
    tracker.log_metrics(parent_id, {f"best_{metric}": best.best}, 0)
    tracker.set_tags(parent_id, {"ffdi.best_trial_id": best.trial_id, "ffdi.best_run_id": best.run_id})
    times = {r.data.tags.get("ffdi.trial_id"): (r.info.start_time / 1000, (r.info.end_time or 0) / 1000)
             for r in tracker.children(experiment_id, parent_id)}
    history = pd.DataFrame([
        {"start_time": times[r.trial_id][0], "end_time": times[r.trial_id][1], metric: r.best, **r.params}
        for r in finished if r.trial_id in times])
    with tempfile.TemporaryDirectory(prefix="ffdi-plots-") as tmp:
        tracker.log_artifact(parent_id, plot_search_history(history, metric, mode, Path(tmp) / "search_history.png"))
        importance = param_importance(history, searched, metric)
        if importance:
            tracker.log_artifact(parent_id, plot_param_importance(importance, Path(tmp) / "param_importance.png"))


def _prepare_data(cfg: SearchConfig, echo) -> DataConfig:
    """Generate the demo data if asked, check the dataset, and make its root absolute."""
    # Trials run in other working directories (and on other nodes): give them an absolute root.
    data = cfg.data.model_copy(update={"root": str(Path(cfg.data.root).expanduser().resolve())})
    ensure_dataset(data)
    summary = check_dataset(data)
    echo("data: " + ", ".join(f"{k} {v['images']}" + (f" ({v['fake']} fake)" if "fake" in v else "")
                              for k, v in summary.items()))
    pretrained = [cfg.train.pretrained] + (list(cfg.space["pretrained"].choice) if "pretrained" in cfg.space else [])
    check_pretrained(cfg.backbones(), pretrained)
    return data


def run_search(cfg: SearchConfig, *, resume: bool = False, address: str | None = None,
               echo=print) -> SearchOutcome:
    """Run (or resume) the search ``cfg`` to the end and return its ranked trials.

    Raises :class:`SearchError` for an existing name without ``resume`` (or nothing to resume) and
    :class:`SearchInterrupted` when Ctrl-C / SIGTERM stopped it with its state saved.
    """
    t0 = time.perf_counter()
    storage_path, out_dir = search_dir(cfg)
    exp_path = f"{storage_path.rstrip('/')}/{cfg.name}"
    exists = tune.Tuner.can_restore(exp_path)
    if exists and not resume:
        raise SearchError(
            f"search {cfg.name!r} already exists at {exp_path}; pass --resume to continue it, or "
            "--name NEW to start another"
        )
    if resume and not exists:
        raise SearchError(f"--resume: no search {cfg.name!r} at {exp_path} to continue; run it without --resume")
    data = _prepare_data(cfg, echo)

    started_ray = not ray.is_initialized()
    if started_ray:
        # Ray notes on every start that token authentication (its default) is on; that is not news.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address=address or cfg.address, include_dashboard=False, configure_logging=True,
                 logging_level="WARNING")
    try:
        resources = _trial_resources(cfg)  # before anything is written to the tracking store
        uri, artifacts = resolve_tracking(cfg.tracking)
        tracker = Tracker(uri, artifacts)
        experiment_id = tracker.experiment_id(cfg.name)
        resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        parent_id = tracker.search_run(experiment_id, cfg.name, resume, resolved, data.root)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    status = "FAILED"
    try:
        fixed = cfg.train.model_dump()
        trainable = tune.with_resources(
            tune.with_parameters(
                _trainable, fixed=fixed, data=data.model_dump(), metric=cfg.search.metric,
                augment_sets=cfg.augment_sets, cpus=resources["cpu"], use_gpu=resources["gpu"] > 0),
            resources,
        )
        callback = MlflowTrials(tracker, experiment_id, parent_id, fixed)
        grid = _make_tuner(cfg, trainable, callback, storage_path, exp_path, resume).fit()
        run_ids = {r.data.tags.get("ffdi.trial_id"): r.info.run_id
                   for r in tracker.children(experiment_id, parent_id)}
        rows = _rows(grid, run_ids, fixed, cfg.search.metric, cfg.search.mode)
        # Tune catches SIGINT/SIGTERM itself, saves its state and returns early from fit().
        interrupted = len(rows) < cfg.search.num_samples or any(r.status == "INTERRUPTED" for r in rows)
        status = "KILLED" if interrupted else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise SearchInterrupted(
            f"search {cfg.name!r} interrupted; continue it with the same command plus --resume") from None
    finally:
        tracker.close_unfinished(experiment_id, parent_id, "KILLED")
        if status != "FINISHED":
            tracker.finish(parent_id, status)
        if started_ray:
            ray.shutdown()

    trials_csv = write_trials_csv(rows, out_dir / "trials.csv", cfg.search.metric, cfg.search.mode)
    if interrupted:
        done = sum(r.status in ("FINISHED", "STOPPED") for r in rows)
        raise SearchInterrupted(
            f"search {cfg.name!r} interrupted with {done} of {cfg.search.num_samples} trials done (state "
            f"saved in {exp_path}); continue it with the same command plus --resume"
        )
    searched = sorted({k.split(CONDITIONAL_SEP)[0] for k in cfg.space} | {
        k for overrides in cfg.per_backbone.values() for k in overrides})
    _summarise(tracker, experiment_id, parent_id, rows, cfg.search.metric, cfg.search.mode, trials_csv, searched)
    tracker.finish(parent_id, "FINISHED")
    return SearchOutcome(cfg.name, out_dir, exp_path, uri, experiment_id, parent_id, rows, trials_csv,
                         time.perf_counter() - t0, data)
