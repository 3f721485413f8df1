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
import platform
import shutil
import tempfile
import time
import uuid
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
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ffdi_tune.config import DataConfig, RobustValConfig, SearchConfig
from ffdi_tune.data import ensure_dataset, read_split
from ffdi_tune.data_check import DataCheck, check_dataset
from ffdi_tune.errors import DataError, SearchError, SearchInterrupted
from ffdi_tune.holdout import NO_REPORT_HASH, Holdout, save_holdout, saved_holdout, split_valset
from ffdi_tune.models import check_weights, resolve_weights
from ffdi_tune.report import param_importance, plot_param_importance, plot_search_history
from ffdi_tune.results import TrialRow, write_atomic, write_trials_csv
from ffdi_tune.space import CONDITIONAL_SEP, DefineByRun, trial_settings
from ffdi_tune.spool import SPOOL_DIR
from ffdi_tune.tracking import Tracker, resolve_tracking, unreachable
from ffdi_tune.train import BEST_FILE, EPOCH_METRICS, augment_placement, train_trial

__all__ = ["SearchOutcome", "run_search", "search_dir", "make_searcher", "ray_address", "check_cluster_paths",
           "experiment_path"]

NODE_ID_KEY = "node_id"  # in every reported result: the Ray node that ran the epoch
AUGMENT_ON_KEY = "augment_on"  # and where its augmentation ran (train.augment_placement)
# result key -> tag on the trial's MLflow run, set when the value first appears or changes
RESULT_TAGS = {NODE_ID_KEY: "ffdi.node_id", AUGMENT_ON_KEY: "ffdi.augment_on",
               "weights_source": "ffdi.weights_source", "weights_sha256": "ffdi.weights_sha256"}

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


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def search_dir(cfg: SearchConfig) -> tuple[str, Path]:
    """(Ray storage path, local output folder) of the search; the storage path may be a URI."""
    if _is_uri(cfg.search.storage):
        # Ray keeps its state in the bucket; the trials table and submission stay on this machine.
        return cfg.search.storage, Path("runs").resolve() / cfg.name
    storage = Path(cfg.search.storage.removeprefix("file://")).expanduser().resolve()
    return str(storage), storage / cfg.name


def _trainable(config: dict[str, Any], fixed: dict, data: dict, metric: str, augment_sets: dict,
               cpus: float, use_gpu: bool, robust_val: dict | None = None,
               val_names: tuple[str, ...] | None = None) -> None:
    """One Ray Tune trial. Runs in a (possibly reused) worker process."""
    started = time.perf_counter()
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
    # A reused worker keeps process state: reset what a trial must not inherit.
    torch.set_num_threads(max(1, int(cpus)))
    if use_gpu and torch.cuda.is_available():
        torch.cuda.empty_cache()
    settings = trial_settings(fixed, config)

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    # Which node ran each epoch (on a cluster) and where augmentation ran: the driver tags the
    # trial's MLflow run with both.
    # and the weights it starts from, as this node resolves them (their hash is computed once per process).
    weights = resolve_weights(settings.backbone, settings.pretrained)
    where = {NODE_ID_KEY: ray.get_runtime_context().get_node_id(),
             AUGMENT_ON_KEY: augment_placement(settings, augment_sets, torch.device(device)),
             "weights_source": weights.source, "weights_sha256": weights.sha256}

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
                    val_names=val_names)
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


def _progress(trial, fixed: dict) -> tuple[int, int]:
    """(epochs run, epochs planned) of a Tune trial; fewer run than planned means ASHA stopped it."""
    return int((trial.last_result or {}).get("epoch", 0)), trial_settings(fixed, trial.config).epochs


class MlflowTrials(tune.Callback):
    """Mirror trials into MLflow child runs from the driver (picklable: Tune saves it for resume)."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_id: str, fixed: dict, val_images: int):
        self.tracker, self.experiment_id, self.parent_id, self.fixed = tracker, experiment_id, parent_id, fixed
        self.val_images = val_images  # how many valset images each epoch's metrics use (the selection part)
        self.run_ids: dict[str, str] = {}

    def _run(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            params = trial_settings(self.fixed, trial.config).model_dump()
            params.update({k: v for k, v in trial.config.items() if CONDITIONAL_SEP in k})
            if getattr(self, "val_images", None):  # absent in a callback pickled before it existed
                params["val_images"] = self.val_images
            self.run_ids[trial.trial_id] = self.tracker.trial_run(
                self.experiment_id, self.parent_id, trial.trial_id, params, run_name=f"trial-{trial.trial_id}")
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: result[k] for k in (*EPOCH_METRICS, "time_to_first_batch_s") if k in result}
        self.tracker.log_metrics(self._run(trial), metrics, step=int(result.get("epoch", 0)))
        # Tag only on a change (a retry after a node loss may move the trial), not per epoch.
        tagged = self.__dict__.setdefault("result_tags", {})  # absent in a callback pickled before it existed
        tags = {tag: str(result[key]) for key, tag in RESULT_TAGS.items()
                if result.get(key) and tagged.get((trial.trial_id, tag)) != str(result[key])}
        if tags:
            tagged.update({(trial.trial_id, tag): value for tag, value in tags.items()})
            self.tracker.set_tags(self._run(trial), tags)

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


# -- Beyond one machine: which Ray to use, and what every node must see -------------------------

NODE_CHECK_TIMEOUT_S = 120.0  # a node whose check has not answered by then counts as blind (hung mount)


def ray_address(address: str | None) -> str:
    """The Ray a search uses: ``address`` (``--address`` or YAML), else $RAY_ADDRESS, else a new local one.

    Ray's own default, ``ray.init()``, joins the cluster that ``ray start`` last started on this
    machine, which may be someone else's; a search without an address starts a private Ray
    instead. ``auto`` joins that cluster on purpose.

    >>> ray_address(None)  # doctest: +SKIP  (with RAY_ADDRESS unset)
    'local'
    """
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _connect(address: str) -> None:
    """Start a local Ray or join a cluster; a cluster that cannot be joined is a one-line SearchError."""
    # Ray notes on every start that token authentication (its default) is on; that is not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=True, logging_level="WARNING")
    except (ConnectionError, ValueError, ray.exceptions.RayError) as exc:
        if address == "local":
            raise  # not a user's mistake: keep the traceback
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SearchError(
            f"cannot join the Ray cluster at {address!r} ({type(exc).__name__}: {first}); check the address "
            "(auto, HOST:6379 or ray://HOST:10001, the last needs ray[client]) and that the cluster runs; a "
            "cluster with token authentication also needs RAY_AUTH_MODE=token and its token on this machine "
            "(~/.ray/auth_token or $RAY_AUTH_TOKEN)") from None


def experiment_path(storage_path: str, name: str) -> str:
    """``<storage>/<name>``; a URI keeps its query (``s3://b/p?endpoint_override=...``) at the end."""
    base, sep, query = storage_path.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def _checkpoint_location(checkpoint) -> str:
    """A checkpoint's folder as a path, or as a URI (``s3://bucket/...``) when it lives in a bucket."""
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def _node_can_host(node_resources: dict[str, float], resources: dict[str, float]) -> bool:
    return (node_resources.get("CPU", 0.0) + 1e-9 >= resources["cpu"]
            and node_resources.get("GPU", 0.0) + 1e-9 >= resources["gpu"])


def _paths_trials_read(data: DataConfig) -> list[tuple[str, str, str, int | None]]:
    """(key, path, kind, entries on the driver) of what every trial opens; counts catch stale copies."""
    root = Path(data.root)
    items: list[tuple[str, str, str, int | None]] = [("data.root", str(root), "dir", None)]
    for key in ("train_dir", "val_dir"):
        path = root / getattr(data, key)
        items.append((f"data.{key}", str(path), "dir", sum(1 for _ in os.scandir(path))))
    for key in ("train_labels", "val_labels"):
        items.append((f"data.{key}", str(root / getattr(data, key)), "file", None))
    return items


def check_cluster_paths(data: DataConfig, storage_path: str, resources: dict[str, float],
                        timeout_s: float = NODE_CHECK_TIMEOUT_S) -> int:
    """Check that every alive node that can host a trial sees what the trials read; return how many.

    One small task per node (no CPU asked, pinned with ``NodeAffinitySchedulingStrategy``) looks at
    ``data.root``, the train/val folders (same number of entries as on the driver) and label files,
    and, when ``storage_path`` is a local path, at a file the driver just wrote there: Ray keeps
    trial checkpoints in that folder, and the driver copies them into MLflow, so it must be one
    shared folder. Nodes too small for one trial (e.g. a head started with ``--num-cpus 0``) run no
    trial and are not asked, nor is the driver's own node when it is the only one (a local Ray).
    Raises :class:`DataError` (:class:`SearchError` when only the storage is missing) whose message
    has a line per node that cannot see them.
    """
    nodes = [n for n in ray.nodes() if n["Alive"] and _node_can_host(n["Resources"], resources)]
    if not nodes:
        raise SearchError(
            f"resources: a trial asks for {resources['cpu']:g} CPU and {resources['gpu']:g} GPU, but no single "
            "node of the Ray cluster has that much (a trial runs on one node); lower resources or add a bigger node")
    if len(nodes) == 1 and nodes[0]["NodeID"] == ray.get_runtime_context().get_node_id():
        return 1  # one machine, the driver's own: it has just checked the dataset itself
    items = _paths_trials_read(data)
    marker, made = None, []
    if not _is_uri(storage_path):
        storage = Path(storage_path)
        made = [p for p in (storage, *storage.parents) if not p.exists()]  # deepest first
        storage.mkdir(parents=True, exist_ok=True)
        marker = storage / f".ffdi-node-check-{uuid.uuid4().hex}"
        marker.touch()
        items.append(("search.storage", str(marker), "marker", None))

    def look(items: list[tuple[str, str, str, int | None]]) -> str | None:
        # A nested function travels by value: the node imports neither this package nor torch.
        import os

        for key, path, kind, count in items:
            if kind == "marker":
                if not os.path.isfile(path):
                    return (f"search.storage {os.path.dirname(path)} is not the driver's folder there (a file the "
                            "driver wrote in it is missing)")
                continue
            if kind == "dir" and not os.path.isdir(path):
                return f"{key} {path} is not a directory there"
            if kind == "file" and not os.path.isfile(path):
                return f"{key} {path} does not exist there"
            if not os.access(path, os.R_OK):
                return f"{key} {path} is not readable there"
            if count is not None:
                seen = sum(1 for _ in os.scandir(path))
                if seen != count:
                    return f"{key} {path} has {seen} entries there but {count} on the driver"
        return None

    probe = ray.remote(num_cpus=0, max_retries=0)(look)
    try:
        refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(items): n for n in nodes}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        lines = []
        for ref, node in refs.items():
            if ref not in ready:
                why = f"the check did not answer within {timeout_s:g} s (a hung mount?)"
            else:
                try:
                    why = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    why = f"the check failed there ({type(exc).__name__})"
            if why:
                lines.append(f"  node {node['NodeID'][:12]} ({node['NodeManagerAddress']}): {why}")
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
        for folder in made:  # leave no empty storage folder behind a refused search
            try:
                folder.rmdir()
            except OSError:
                break
    if lines:
        only_storage = all(": search.storage " in line for line in lines)
        need = "search.storage on a shared filesystem (or s3://...)" if only_storage else (
            f"data.root ({data.root}) at the same path, with the same files" + (
                ", and search.storage on a shared filesystem (or s3://...)" if marker is not None else ""))
        raise (SearchError if only_storage else DataError)(
            f"{len(lines)} of {len(nodes)} Ray node(s) that can run trials cannot see what the trials read; every "
            f"such node needs {need}:\n" + "\n".join(lines))
    return len(nodes)


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
            checkpoint=_checkpoint_location(result.checkpoint) if result.checkpoint else "",
        ))
    return rows


def make_searcher(cfg: SearchConfig) -> OptunaSearch:
    """Optuna TPE over the config's space, seeded by ``search.seed``: same config, same proposals."""
    sampler = optuna.samplers.TPESampler(seed=cfg.search.seed, n_startup_trials=cfg.search.tpe_startup_trials)
    return OptunaSearch(space=DefineByRun.from_config(cfg), metric=cfg.search.metric, mode=cfg.search.mode,
                        sampler=sampler)


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
    searcher = make_searcher(cfg)
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


def _prepare_data(cfg: SearchConfig, echo) -> DataCheck:
    """Generate the demo data if asked, check the dataset in one pass, and make its root absolute."""
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


def _provenance(check: DataCheck) -> dict[str, str]:
    """Tags that make a search reproducible: package versions and the data's fingerprints."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {"ffdi.version.python": platform.python_version()}
    for package in ("ffdi-tune", "torch", "torchvision", "timm", "ray", "optuna", "mlflow", "numpy", "pillow"):
        try:
            tags[f"ffdi.version.{package}"] = version(package)
        except PackageNotFoundError:
            pass
    tags |= {f"ffdi.data_fingerprint.{split}": value for split, value in check.fingerprints.items()}
    tags |= {"ffdi.on_bad_image": check.data.on_bad_image, "ffdi.skipped_images": str(len(check.skipped))}
    return tags


def run_search(cfg: SearchConfig, *, resume: bool = False, address: str | None = None,
               echo=print) -> SearchOutcome:
    """Run (or resume) the search ``cfg`` to the end and return its ranked trials.

    Raises :class:`SearchError` for an existing name without ``resume`` (or nothing to resume) and
    :class:`SearchInterrupted` when Ctrl-C / SIGTERM stopped it with its state saved.
    """
    t0 = time.perf_counter()
    storage_path, out_dir = search_dir(cfg)
    exp_path = experiment_path(storage_path, cfg.name)
    exists = tune.Tuner.can_restore(exp_path)
    if exists and not resume:
        raise SearchError(
            f"search {cfg.name!r} already exists at {exp_path}; pass --resume to continue it, or "
            "--name NEW to start another"
        )
    if resume and not exists:
        raise SearchError(f"--resume: no search {cfg.name!r} at {exp_path} to continue; run it without --resume")
    check = _prepare_data(cfg, echo)
    data = check.data
    holdout = search_holdout(cfg, data, out_dir, resume, echo)

    started_ray = not ray.is_initialized()
    if started_ray:
        _connect(ray_address(address or cfg.address))
    try:
        resources = _trial_resources(cfg)  # before anything is written to the tracking store
        check_cluster_paths(data, storage_path, resources)
        uri, artifacts = resolve_tracking(cfg.tracking)
        tracker = Tracker(uri, artifacts, spool_dir=out_dir.resolve() / SPOOL_DIR)
        experiment_id = tracker.experiment_id(cfg.name)
        tracker.replay()  # writes a killed driver kept while the store was down go first
        resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        parent_id = tracker.search_run(experiment_id, cfg.name, resume, resolved, data.root,
                                       _provenance(check) | holdout.tags())
        save_holdout(out_dir, holdout)
        if check.skipped:
            with tempfile.TemporaryDirectory(prefix="ffdi-skipped-") as tmp:
                listing = pd.DataFrame(check.skipped, columns=["split", "img_name", "reason"])
                tracker.log_artifact(parent_id, write_atomic(Path(tmp) / "skipped_images.csv",
                                                             listing.to_csv(index=False)))
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
                augment_sets=cfg.augment_sets, cpus=resources["cpu"], use_gpu=resources["gpu"] > 0,
                robust_val=cfg.robust_val.model_dump(mode="json"), val_names=holdout.select_names),
            resources,
        )
        callback = MlflowTrials(tracker, experiment_id, parent_id, fixed, len(holdout.select_names))
        grid = _make_tuner(cfg, trainable, callback, storage_path, exp_path, resume).fit()
        if tracker.replay():
            run_ids = {r.data.tags.get("ffdi.trial_id"): r.info.run_id
                       for r in tracker.children(experiment_id, parent_id)}
        else:  # the store is still down: what this driver knows
            run_ids = {t: tracker.resolve(r) for t, r in callback.run_ids.items()}
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
    if tracker.pending():
        tracker.log_artifact(parent_id, trials_csv)  # kept; the plots need the store's run times
    else:
        try:
            _summarise(tracker, experiment_id, parent_id, rows, cfg.search.metric, cfg.search.mode, trials_csv,
                       searched)
        except Exception as exc:  # the store went away just now: the trials are safe, the plots can wait
            if not unreachable(exc):
                raise
            echo(f"MLflow at {uri} stopped answering; the search history plots are skipped")
            tracker.log_artifact(parent_id, trials_csv)
    tracker.finish(parent_id, "FINISHED")
    if tracker.pending():
        storage = "" if cfg.search.storage == "runs" or _is_uri(cfg.search.storage) else f" --storage {cfg.search.storage}"
        echo(f"MLflow at {uri} is unreachable: {tracker.pending()} tracking write(s) are kept in "
             f"{tracker.spool.folder}, nothing is lost; once it is back, run: ffdi-tune sync {cfg.name}{storage}")
    return SearchOutcome(cfg.name, out_dir, exp_path, uri, experiment_id, parent_id, rows, trials_csv,
                         time.perf_counter() - t0, data, tracker.pending())
