"""The search runner: Ray Tune trials proposed by Optuna's TPE, stopped early by ASHA, in rounds.

With :mod:`ffdi_tune.cluster` (the Ray to run on) and :mod:`ffdi_tune.searcher` /
:mod:`ffdi_tune.tune_callbacks` (what Tune asks before and after each trial), the only modules that
import Ray. Trials run :func:`ffdi_tune.train.train_trial`; the driver mirrors them into MLflow.

A search is one or more *rounds*, each a Tune experiment: the first at ``<storage>/<name>``, later
ones at ``<storage>/<name>/round-<k>``, each proposed by a searcher restored from the round before
(so TPE continues from everything it has learned). ``--resume`` first finishes the last round,
then adds a round when the search is asked for more trials (``--num-samples``) or more time
(``--time-budget``) than it has had.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
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

from ffdi_tune import cache_plan, tracking
from ffdi_tune.budget import FinalStageEstimate, TimeBudget, format_duration
from ffdi_tune.cluster import check_cluster_paths, connect, ray_address, trial_resources
from ffdi_tune.config import DataConfig, RobustValConfig, SearchConfig
from ffdi_tune.data import cache_dir_of, ensure_dataset, read_split
from ffdi_tune.data_check import DataCheck, check_dataset
from ffdi_tune.errors import SearchError, SearchInterrupted
from ffdi_tune.files import is_bucket_uri, write_atomic
from ffdi_tune.holdout import NO_REPORT_HASH, Holdout, save_holdout, saved_holdout, split_valset
from ffdi_tune.models import check_weights, resolve_weights
from ffdi_tune.placement import augment_placement
from ffdi_tune.report import summarise_search
from ffdi_tune.results import TrialRow, write_trials_csv
from ffdi_tune.searcher import BudgetStopper, LiveBudget, TrialSearcher, attach_budget, detach_budget
from ffdi_tune.space import CONDITIONAL_SEP, DefineByRun, trial_settings
from ffdi_tune.spool import SPOOL_DIR
from ffdi_tune.tracking import Tracker, resolve_tracking, unreachable
from ffdi_tune.train import train_trial
from ffdi_tune.tune_callbacks import MlflowTrials, progress

__all__ = ["SearchOutcome", "run_search", "search_dir", "make_searcher", "experiment_path", "search_holdout",
           "MlflowTrials"]  # MlflowTrials: searches saved by older versions pickled it under this module

ROUNDS_FILE = "rounds.json"  # in a search's output folder: its rounds' experiment paths and sizes

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
    tracking_pending: int = 0  # writes kept in the spool because the tracking store was unreachable
    budget: TimeBudget | None = None


def search_dir(cfg: SearchConfig) -> tuple[str, Path]:
    """(Ray storage path, local output folder) of the search; the storage path may be a URI."""
    if is_bucket_uri(cfg.search.storage):
        # Ray keeps its state in the bucket; the trials table and submission stay on this machine.
        return cfg.search.storage, Path("runs").resolve() / cfg.name
    storage = Path(cfg.search.storage.removeprefix("file://")).expanduser().resolve()
    return str(storage), storage / cfg.name


def experiment_path(storage_path: str, name: str) -> str:
    """``<storage>/<name>``; a URI keeps its query (``s3://b/p?endpoint_override=...``) at the end."""
    base, sep, query = storage_path.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def _checkpoint_location(checkpoint) -> str:
    """A checkpoint's folder as a path, or as a URI (``s3://bucket/...``) when it lives in a bucket."""
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


# -- one trial ----------------------------------------------------------------------------------

def _trainable(config: dict[str, Any], fixed: dict, data: dict, metric: str, augment_sets: dict,
               cpus: float, use_gpu: bool, robust_val: dict | None = None,
               val_names: tuple[str, ...] | None = None, deadline: float | None = None) -> None:
    """One Ray Tune trial. Runs in a (possibly reused) worker process."""
    started = time.perf_counter()
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
    # A reused worker keeps process state: reset what a trial must not inherit.
    torch.set_num_threads(max(1, int(cpus)))
    if use_gpu and torch.cuda.is_available():
        torch.cuda.empty_cache()
    settings = trial_settings(fixed, config)
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    # Every report also says which node ran the epoch, where augmentation ran and which weights the
    # trial started from (as this node resolved them): the driver tags the trial's run with them.
    weights = resolve_weights(settings.backbone, settings.pretrained)
    where = {"node_id": ray.get_runtime_context().get_node_id(),
             "augment_on": augment_placement(settings, augment_sets, torch.device(device)),
             "weights_source": weights.source, "weights_sha256": weights.sha256, "epochs_planned": settings.epochs}

    def report(metrics: dict[str, float], folder: Path) -> None:
        tune.report({**metrics, **where}, checkpoint=tune.Checkpoint.from_directory(str(folder)))

    checkpoint = tune.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="ffdi-resume-"))
        checkpoint.to_directory(str(resume_dir))
    try:
        train_trial(settings, DataConfig.model_validate(data), report, metric=metric,
                    augment_sets=augment_sets, resume_from=resume_dir, device=device, started_at=started,
                    robust_val=RobustValConfig.model_validate(robust_val) if robust_val else None,
                    val_names=val_names, deadline=deadline)
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


# -- rounds of trials ----------------------------------------------------------------------------

def make_searcher(cfg: SearchConfig) -> TrialSearcher:
    """Optuna TPE over the config's space, seeded by ``search.seed``: same config, same proposals."""
    sampler = optuna.samplers.TPESampler(seed=cfg.search.seed, n_startup_trials=cfg.search.tpe_startup_trials)
    return TrialSearcher(space=DefineByRun.from_config(cfg), metric=cfg.search.metric, mode=cfg.search.mode,
                         sampler=sampler, search_name=cfg.name)


def _restored_searcher(cfg: SearchConfig, round_path: str) -> TrialSearcher:
    """A searcher that continues from the state the round at ``round_path`` saved last."""
    searcher = make_searcher(cfg)
    if not is_bucket_uri(round_path):
        searcher.restore_from_dir(round_path)
        return searcher
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(round_path)
    states = [f for f in fs.get_file_info(pyarrow.fs.FileSelector(path))
              if Path(f.path).name.startswith("searcher-state-")]
    with tempfile.TemporaryDirectory(prefix="ffdi-searcher-") as tmp:
        for f in states:
            with fs.open_input_stream(f.path) as src, open(Path(tmp) / Path(f.path).name, "wb") as dst:
                dst.write(src.read())
        searcher.restore_from_dir(tmp)
    return searcher


def _scheduler(cfg: SearchConfig):
    if cfg.scheduler.type == "asha":
        return ASHAScheduler(
            metric=cfg.search.metric, mode=cfg.search.mode, time_attr="epoch",
            max_t=cfg.scheduler.max_epochs or cfg.max_epochs(), grace_period=cfg.scheduler.grace_period,
            reduction_factor=cfg.scheduler.reduction_factor)
    return FIFOScheduler()


def _new_round(cfg: SearchConfig, trainable, callback: MlflowTrials, storage: str, name: str, num_samples: int,
               searcher: TrialSearcher) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=_scheduler(cfg), num_samples=num_samples,
            max_concurrent_trials=cfg.search.max_concurrent, reuse_actors=cfg.search.reuse_actors),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=1, callbacks=[callback], stop=BudgetStopper(cfg.name),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures)),
    )


def _load_rounds(out_dir: Path, exp_path: str) -> list[dict]:
    path = out_dir / ROUNDS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return [{"path": exp_path, "num_samples": None}]  # a search started before rounds were recorded


def _save_rounds(out_dir: Path, rounds: list[dict]) -> None:
    write_atomic(out_dir / ROUNDS_FILE, json.dumps(rounds, indent=1))


def _fit_rounds(cfg: SearchConfig, trainable, callback: MlflowTrials, storage_path: str, exp_path: str,
                out_dir: Path, resume: bool, grow: bool, live: LiveBudget | None) -> tuple[list, int]:
    """Run the search's rounds; return every round's ResultGrid and how many trials were planned.

    On a resume the last round is finished first (the earlier ones are only read back), then a new
    round is added while fewer trials exist than ``search.num_samples`` asks for (``grow``: a new
    time budget on a finished search adds up to ``num_samples`` more).
    """
    if not resume:
        rounds = [{"path": exp_path, "num_samples": cfg.search.num_samples}]
        _save_rounds(out_dir, rounds)
        return [_new_round(cfg, trainable, callback, storage_path, cfg.name, cfg.search.num_samples,
                           make_searcher(cfg)).fit()], cfg.search.num_samples
    rounds = _load_rounds(out_dir, exp_path)
    grids = [tune.Tuner.restore(r["path"], trainable=trainable).get_results() for r in rounds[:-1]]
    # The restored run config brings back its pickled MlflowTrials, which finds the same parent run
    # and re-attaches to existing child runs by their ffdi.trial_id tag.
    grids.append(tune.Tuner.restore(rounds[-1]["path"], trainable=trainable, resume_errored=True).fit())
    rounds[-1]["num_samples"] = rounds[-1]["num_samples"] or len(grids[-1])
    have = sum(len(g) for g in grids)
    want = have + cfg.search.num_samples if grow and have >= cfg.search.num_samples else cfg.search.num_samples
    unfinished = any(s == "INTERRUPTED" for g in grids[-1:] for s in _statuses(g))
    if have < want and not unfinished and (live is None or live.room_for_a_trial()):
        k = len(rounds) + 1
        name = f"round-{k}"
        rounds.append({"path": experiment_path(exp_path, name), "num_samples": want - have})
        _save_rounds(out_dir, rounds)
        searcher = _restored_searcher(cfg, rounds[-2]["path"])
        grids.append(_new_round(cfg, trainable, callback, exp_path, name, want - have, searcher).fit())
    return grids, sum(r["num_samples"] for r in rounds)


def _trials_and_results(grid) -> list:
    """(Tune trial, Result) pairs of a ResultGrid. The public Result lacks the trial's id and status
    (pending, running, terminated, errored); only the grid's analysis object keeps them."""
    return list(zip(grid._experiment_analysis.trials, grid))


def _statuses(grid) -> list[str]:
    return ["INTERRUPTED" if t.status not in ("TERMINATED", "ERROR") else t.status
            for t, _ in _trials_and_results(grid)]


def _rows(grids: list, run_ids: dict[str, str], fixed: dict, metric: str, mode: str, cut: set[str]) -> list[TrialRow]:
    """One row per trial of every round of a finished (or interrupted) search."""
    rows = []
    for grid in grids:
        for trial, result in _trials_and_results(grid):
            history = result.metrics_dataframe
            best = math.nan
            if history is not None and metric in history:
                series = history[metric].dropna()
                if len(series):
                    best = float(series.max() if mode == "max" else series.min())
            epochs_run, planned = progress(trial, fixed)
            if result.error:
                status = "FAILED"
            elif trial.trial_id in cut:
                status = "CUT"  # the time budget ended it
            elif trial.status not in ("TERMINATED", "ERROR"):
                status = "INTERRUPTED"  # pending, running or paused when the driver stopped
            else:
                status = "STOPPED" if epochs_run < planned else "FINISHED"
            rows.append(TrialRow(
                trial_id=trial.trial_id, run_id=run_ids.get(trial.trial_id, ""), status=status, best=best,
                epochs_run=epochs_run, params={k.split(CONDITIONAL_SEP)[0]: v for k, v in trial.config.items()},
                checkpoint=_checkpoint_location(result.checkpoint) if result.checkpoint else ""))
    return rows


# -- before the first trial ----------------------------------------------------------------------

def _prepare_data(cfg: SearchConfig, echo) -> DataCheck:
    """Check the weights, generate the demo data if asked, check the dataset in one pass; absolute root."""
    # Trials run in other working directories (and on other nodes): give them an absolute root.
    data = cfg.data.model_copy(update={"root": str(Path(cfg.data.root).expanduser().resolve())})
    # Weights first: finding out about them after minutes of image checks wastes the user's time.
    check_weights(cfg.pretrained_choices(), cfg.setting_values("drop_path_rate"), echo)
    ensure_dataset(data)
    check = check_dataset(data)
    echo("data: " + ", ".join(f"{k} {v['images']}" + (f" ({v['fake']} fake)" if "fake" in v else "")
                              for k, v in check.summary.items()))
    if check.skipped:
        listed = ", ".join(f"{split}/{name} ({why})" for split, name, why in check.skipped[:10])
        more = f" and {len(check.skipped) - 10} more" if len(check.skipped) > 10 else ""
        echo(f"data: left out {len(check.skipped)} image(s) that do not decode (data.on_bad_image: skip): "
             f"{listed}{more}")
    return check


def search_holdout(cfg: SearchConfig, data: DataConfig, out_dir: Path, resume: bool, echo) -> Holdout:
    """The valset split of the search: from ``search.holdout``, or the one it started with on a resume."""
    fraction, seed = cfg.search.holdout.fraction, cfg.search.holdout.seed
    before = saved_holdout(out_dir) if resume else None
    if resume and before is None:  # started by a version that scored all of valset during the search
        before = {"fraction": 0.0, "seed": 0, "report_hash": NO_REPORT_HASH}
    if before is not None:
        if (before["fraction"], before["seed"]) != (fraction, seed):
            echo(f"holdout: --resume keeps the valset split the search started with (fraction {before['fraction']:g}, "
                 f"seed {before['seed']}), not search.holdout's (fraction {fraction:g}, seed {seed})")
        fraction, seed = before["fraction"], before["seed"]
    holdout = split_valset(read_split(data, "val"), fraction, seed)
    if before is not None and holdout.report_hash != before["report_hash"]:
        raise SearchError(
            f"--resume: valset changed since search {cfg.name!r} started (its report part was {before['report_hash']}, "
            f"now {holdout.report_hash}), so the trials so far chose on other images; restore valset, or start a "
            "new search with --name NEW")
    if holdout.honest:
        echo(f"holdout: {len(holdout.select_names)} valset images choose (trials, epochs, members), "
             f"{len(holdout.report_names)} are kept unseen for the final estimate (search.holdout)")
    else:
        echo("holdout: none (search.holdout.fraction is 0): every valset image chooses, so the final stage has no "
             "honest estimate")
    return holdout


def _warm_cache(cfg: SearchConfig, data: DataConfig, holdout: Holdout, build: bool, echo) -> None:
    """Check the decoded images fit this node's cache; on one machine, build them now with every CPU."""
    cache_dir = cache_dir_of(data)
    if cache_dir is None:
        return
    entries = cache_plan.planned_entries(cfg, data, holdout)
    cache_plan.check_fits(entries, cache_dir, data.cache_max_gb)
    if build:
        cache_plan.build(entries, cache_dir, echo)


def _provenance(check: DataCheck) -> dict[str, str]:
    """Tags that make a search reproducible: package versions and the data's fingerprints."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {f"{tracking.VERSION_PREFIX}python": platform.python_version()}
    for package in ("ffdi-tune", "torch", "torchvision", "timm", "ray", "optuna", "mlflow", "numpy", "pillow"):
        try:
            tags[f"{tracking.VERSION_PREFIX}{package}"] = version(package)
        except PackageNotFoundError:
            pass
    tags |= {f"{tracking.FINGERPRINT_PREFIX}{split}": value for split, value in check.fingerprints.items()}
    tags |= {tracking.ON_BAD_IMAGE: check.data.on_bad_image, tracking.SKIPPED_IMAGES: str(len(check.skipped))}
    return tags


def _open_tracking(cfg: SearchConfig, resume: bool, check: DataCheck, holdout: Holdout,
                   out_dir: Path) -> tuple[Tracker, str, str]:
    """The tracker, experiment and parent run of the search (the same parent run on a resume)."""
    uri, artifacts = resolve_tracking(cfg.tracking)
    tracker = Tracker(uri, artifacts, spool_dir=out_dir.resolve() / SPOOL_DIR)
    experiment_id = tracker.experiment_id(cfg.name)
    tracker.replay()  # writes a killed driver kept while the store was down go first
    resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    parent_id = tracker.search_run(experiment_id, cfg.name, resume, resolved, check.data.root,
                                   _provenance(check) | tracking.holdout_tags(holdout))
    save_holdout(out_dir, holdout)
    if check.skipped:
        with tempfile.TemporaryDirectory(prefix="ffdi-skipped-") as tmp:
            listing = pd.DataFrame(check.skipped, columns=["split", "img_name", "reason"])
            tracker.log_artifact(parent_id, write_atomic(Path(tmp) / "skipped_images.csv", listing.to_csv(index=False)))
    return tracker, experiment_id, parent_id


def _live_budget(cfg: SearchConfig, out_dir: Path, resume: bool, extra_time_s: float | None, check: DataCheck,
                 holdout: Holdout, final_stage_passes: int, echo) -> LiveBudget | None:
    """The time budget of this run of the driver, with its estimate of the final stage's share."""
    total = cfg.search.time_budget
    budget = (TimeBudget.resume(out_dir, extra_time_s, total) if resume
              else TimeBudget(total, folder=out_dir) if total else None)
    if budget is None:
        return None
    echo(f"time budget: {format_duration(budget.remaining())} left of {format_duration(budget.total_s)} "
         f"({format_duration(budget.used_before_s)} used before); the final stage's share is kept back")
    images = check.summary["val"]["images"] + check.summary["test"]["images"]
    per_eval = len(holdout.select_names) * (2 if cfg.robust_val.enabled else 1)
    return LiveBudget(budget, FinalStageEstimate(images, final_stage_passes, per_eval))


def run_search(cfg: SearchConfig, *, resume: bool = False, address: str | None = None,
               extra_time_s: float | None = None, final_stage_passes: int = 2, echo=print) -> SearchOutcome:
    """Run (or resume, or extend) the search ``cfg`` to the end and return its ranked trials.

    ``extra_time_s`` gives a resumed search that much more time than it has used (``--time-budget``
    with ``--resume``); ``final_stage_passes`` is how many times the final stage will score each
    image (its TTA views; 0 when it will not run), for the share of a time budget kept for it.
    Raises :class:`SearchError` for an existing name without ``resume`` (or nothing to resume) and
    :class:`SearchInterrupted` when Ctrl-C / SIGTERM stopped it with its state saved.
    """
    t0 = time.perf_counter()
    storage_path, out_dir = search_dir(cfg)
    exp_path = experiment_path(storage_path, cfg.name)
    exists = tune.Tuner.can_restore(exp_path)
    if exists and not resume:
        raise SearchError(f"search {cfg.name!r} already exists at {exp_path}; pass --resume to continue it, or "
                          "--name NEW to start another")
    if resume and not exists:
        raise SearchError(f"--resume: no search {cfg.name!r} at {exp_path} to continue; run it without --resume")
    check = _prepare_data(cfg, echo)
    holdout = search_holdout(cfg, check.data, out_dir, resume, echo)
    started_ray = not ray.is_initialized()
    _warm_cache(cfg, check.data, holdout, build=started_ray and ray_address(address or cfg.address) == "local",
                echo=echo)
    if started_ray:
        connect(ray_address(address or cfg.address))
    try:
        resources = trial_resources(cfg)  # before anything is written to the tracking store
        check_cluster_paths(check.data, storage_path, resources)
        tracker, experiment_id, parent_id = _open_tracking(cfg, resume, check, holdout, out_dir)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    live = _live_budget(cfg, out_dir, resume, extra_time_s, check, holdout, final_stage_passes, echo)
    fixed = cfg.train.model_dump()
    status, grids, planned = "FAILED", [], 0
    try:
        if live is not None:
            attach_budget(cfg.name, live)
        trainable = tune.with_resources(tune.with_parameters(
            _trainable, fixed=fixed, data=check.data.model_dump(), metric=cfg.search.metric,
            augment_sets=cfg.augment_sets, cpus=resources["cpu"], use_gpu=resources["gpu"] > 0,
            robust_val=cfg.robust_val.model_dump(mode="json"), val_names=holdout.select_names,
            deadline=live.budget.end_time() if live else None), resources)
        callback = MlflowTrials(tracker, experiment_id, parent_id, fixed, len(holdout.select_names), cfg.name)
        grids, planned = _fit_rounds(cfg, trainable, callback, storage_path, exp_path, out_dir, resume,
                                     grow=resume and extra_time_s is not None, live=live)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise SearchInterrupted(
            f"search {cfg.name!r} interrupted; continue it with the same command plus --resume") from None
    finally:
        detach_budget(cfg.name)
        if live is not None:
            live.budget.save()
        tracker.close_unfinished(experiment_id, parent_id, "KILLED")
        if status != "FINISHED":
            tracker.finish(parent_id, status)
        if started_ray:
            ray.shutdown()
    rows = _rows(grids, _run_ids(tracker, experiment_id, parent_id, callback), fixed, cfg.search.metric,
                 cfg.search.mode, live.budget.cut if live else set())
    trials_csv = write_trials_csv(rows, out_dir / "trials.csv", cfg.search.metric, cfg.search.mode)
    spent = live is not None and not live.room_for_a_trial()
    # Tune catches SIGINT/SIGTERM itself, saves its state and returns early from fit().
    if not spent and (len(rows) < planned or any(r.status == "INTERRUPTED" for r in rows)):
        tracker.finish(parent_id, "KILLED")
        done = sum(r.status in ("FINISHED", "STOPPED", "CUT") for r in rows)
        raise SearchInterrupted(f"search {cfg.name!r} interrupted with {done} of {planned} trials done (state saved "
                                f"in {exp_path}); continue it with the same command plus --resume")
    if spent:
        echo(f"time budget: spent; {len(rows)} trial(s) ran, {sum(r.status == 'CUT' for r in rows)} ended by it")
    _finish_tracking(cfg, tracker, experiment_id, parent_id, rows, trials_csv, echo)
    return SearchOutcome(cfg.name, out_dir, exp_path, tracker.uri, experiment_id, parent_id, rows, trials_csv,
                         time.perf_counter() - t0, check.data, tracker.pending(), live.budget if live else None)


def _run_ids(tracker: Tracker, experiment_id: str, parent_id: str, callback: MlflowTrials) -> dict[str, str]:
    if tracker.replay():
        return {t.trial_id: t.run_id for t in tracker.trials_of(experiment_id, parent_id)}
    return {t: tracker.resolve(r) for t, r in callback.run_ids.items()}  # the store is still down


def _finish_tracking(cfg: SearchConfig, tracker: Tracker, experiment_id: str, parent_id: str,
                     rows: list[TrialRow], trials_csv: Path, echo) -> None:
    """The parent run's summary (plots when the store answers), then FINISHED."""
    searched = sorted({k.split(CONDITIONAL_SEP)[0] for k in cfg.space} | {
        k for overrides in cfg.per_backbone.values() for k in overrides})
    if tracker.pending():
        tracker.log_artifact(parent_id, trials_csv)  # kept; the plots need the store's run times
    else:
        try:
            summarise_search(tracker, experiment_id, parent_id, rows, cfg.search.metric, cfg.search.mode,
                             trials_csv, searched)
        except Exception as exc:  # the store went away just now: the trials are safe, the plots can wait
            if not unreachable(exc):
                raise
            echo(f"MLflow at {tracker.uri} stopped answering; the search history plots are skipped")
            tracker.log_artifact(parent_id, trials_csv)
    tracker.finish(parent_id, "FINISHED")
    if tracker.pending():
        storage = "" if cfg.search.storage == "runs" or is_bucket_uri(cfg.search.storage) else \
            f" --storage {cfg.search.storage}"
        echo(f"MLflow at {tracker.uri} is unreachable: {tracker.pending()} tracking write(s) are kept in "
             f"{tracker.spool.folder}, nothing is lost; once it is back, run: ffdi-tune sync {cfg.name}{storage}")
