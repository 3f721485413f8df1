"""A search's steps around its trials, none of them Ray's: before (weights, data, the valset split,
the decode cache, the tracking runs, the time budget) and after (the trial runs found again, the
parent run summarised by :mod:`~ffdi_tune.search.summary` and closed)."""

from __future__ import annotations

import platform
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from ffdi_tune import tracking
from ffdi_tune.config import SearchConfig
from ffdi_tune.data.check import DataCheck, check_dataset
from ffdi_tune.data.holdout import (
    HOLDOUT_FILE,
    REPORT_NAMES_FILE,
    Holdout,
    report_names_json,
    save_holdout,
    saved_holdout,
    split_valset,
    unrecorded_split,
)
from ffdi_tune.data.layout import cache_dir_of, ensure_dataset, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.durations import format_duration
from ffdi_tune.errors import SearchError
from ffdi_tune.files import is_bucket_uri, write_atomic
from ffdi_tune.models.factory import check_weights
from ffdi_tune.search import cache_plan
from ffdi_tune.search.budget import FinalStageEstimate, TimeBudget
from ffdi_tune.search.searcher import LiveBudget
from ffdi_tune.search.space import CONDITIONAL_SEP
from ffdi_tune.search.summary import summarise_search
from ffdi_tune.search.trials_table import TrialRow
from ffdi_tune.tracking import Tracker, resolve_tracking, unreachable
from ffdi_tune.tracking.spool import SPOOL_DIR

__all__ = [
    "prepare_data",
    "holdout_for_search",
    "cache_entries",
    "warm_cache",
    "provenance",
    "source_tags",
    "open_tracking",
    "search_inputs",
    "live_budget",
    "trial_run_ids",
    "finish_tracking",
]


def prepare_data(cfg: SearchConfig, echo) -> DataCheck:
    """Check the weights, generate the demo data if asked, and check the dataset in one pass (its
    root made absolute)."""
    # Trials run in other working directories (and on other nodes): give them an absolute root.
    data = cfg.data.model_copy(update={"root": str(Path(cfg.data.root).expanduser().resolve())})
    # Weights first: finding out about them after minutes of image checks wastes the user's time.
    choices = cfg.pretrained_choices()
    rates = {b: cfg.backbone_values(b, "drop_path_rate") for b in choices}
    check_weights(choices, rates, echo)
    ensure_dataset(data)
    check = check_dataset(data)
    echo(
        "data: "
        + ", ".join(
            f"{k} {v['images']}" + (f" ({v['fake']} fake)" if "fake" in v else "")
            for k, v in check.summary.items()
        )
    )
    if check.skipped:
        listed = ", ".join(f"{split}/{name} ({why})" for split, name, why in check.skipped[:10])
        more = f" and {len(check.skipped) - 10} more" if len(check.skipped) > 10 else ""
        echo(
            f"data: left out {len(check.skipped)} image(s) that do not decode (data.on_bad_image: "
            f"skip): {listed}{more}"
        )
    if check.overlaps:
        shared = ", ".join(f"{pair} {n}" for pair, n in check.overlaps.items())
        echo(f"data: byte-identical images shared by splits: {shared} (data.allow_overlap)")
    return check


def holdout_for_search(
    cfg: SearchConfig, data: DataConfig, out_dir: Path, resume: bool, echo
) -> Holdout:
    """Split valset for the search: as ``search.holdout`` says, or as the search started on a resume
    (refused when the report part's images changed since)."""
    fraction, seed = cfg.search.holdout.fraction, cfg.search.holdout.seed
    before = (saved_holdout(out_dir) or _recorded_holdout(cfg)) if resume else None
    if before is not None:
        if (before["fraction"], before["seed"]) != (fraction, seed):
            echo(
                "holdout: --resume keeps the valset split the search started with (fraction "
                f"{before['fraction']:g}, seed {before['seed']}), not search.holdout's (fraction "
                f"{fraction:g}, seed {seed})"
            )
        fraction, seed = before["fraction"], before["seed"]
    holdout = split_valset(read_split(data, "val"), fraction, seed)
    if before is not None and not holdout.matches(before["report_hash"]):
        raise SearchError(
            f"--resume: valset changed since search {cfg.name!r} started (its report part was "
            f"{before['report_hash']}, now {holdout.report_hash}), so the trials so far chose on "
            "other images; restore valset, or start a new search with --name NEW"
        )
    if holdout.honest:
        echo(
            f"holdout: {len(holdout.select_names)} valset images choose (trials, epochs, members), "
            f"{len(holdout.report_names)} are kept unseen for the final estimate (search.holdout)"
        )
    else:
        echo(
            "holdout: none (search.holdout.fraction is 0): every valset image chooses, so the "
            "final stage has no honest estimate"
        )
    return holdout


def _recorded_holdout(cfg: SearchConfig) -> dict:
    """The split on the search's parent run, for a resume on a machine (or in a folder) without its
    ``holdout.json``, as with bucket storage; ``fraction 0`` for a search started by a version that
    chose on all of valset."""
    uri, artifacts = resolve_tracking(cfg.tracking)
    try:
        tags = Tracker(uri, artifacts).search_tags(cfg.name)
    except Exception as exc:
        if not unreachable(exc):
            raise
        raise SearchError(
            f"--resume: search {cfg.name!r} has no {HOLDOUT_FILE} here and MLflow at {uri} is "
            "unreachable, so the valset split it started with is unknown; resume where it started "
            "or once the tracking store answers"
        ) from None
    if not tags:
        raise SearchError(
            f"--resume: search {cfg.name!r} has no {HOLDOUT_FILE} here and MLflow at {uri} has no "
            "run of it, so the valset split it started with is unknown; resume where it started, "
            "or set tracking.uri (or MLFLOW_TRACKING_URI) to the store it logged to"
        )
    return tracking.holdout_from_tags(tags) or unrecorded_split()


def cache_entries(cfg: SearchConfig, data: DataConfig, holdout: Holdout) -> list:
    """The decoded arrays the search's trials will read (none with the cache off)."""
    return cache_plan.planned_entries(cfg, data, holdout) if data.cache else []


def warm_cache(cfg: SearchConfig, data: DataConfig, holdout: Holdout, echo) -> None:
    """On one machine: check the decoded images fit its cache, then build them with every CPU
    (before Ray starts, since the build forks). A cluster's nodes do this themselves
    (:func:`~ffdi_tune.search.cluster.warm_node_caches`)."""
    cache_dir = cache_dir_of(data)
    if cache_dir is None:
        return
    entries = cache_entries(cfg, data, holdout)
    cache_plan.check_fits(entries, cache_dir, data.cache_max_gb)
    cache_plan.build(entries, cache_dir, echo)


def source_tags(space: Path | None) -> dict[str, str]:
    """MLflow's source tags for the space file: its path and, when it sits in a git repository,
    the commit checked out (``mlflow.source.git.commit``, shown by the MLflow UI) and the remote."""
    if space is None:
        return {}
    tags = {"mlflow.source.name": str(space), "mlflow.source.type": "LOCAL"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(space.parent), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):  # no git here
            return None
        return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None

    if commit := git("rev-parse", "HEAD"):
        tags["mlflow.source.git.commit"] = commit
        if remote := git("config", "--get", "remote.origin.url"):
            tags["mlflow.source.git.repoURL"] = remote
    return tags


def provenance(check: DataCheck) -> dict[str, str]:
    """Tags that make a search reproducible: package versions and the data's fingerprints."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {f"{tracking.VERSION_PREFIX}python": platform.python_version()}
    for package in (
        "ffdi-tune",
        "torch",
        "torchvision",
        "timm",
        "ray",
        "optuna",
        "mlflow",
        "numpy",
        "pillow",
    ):
        try:
            tags[f"{tracking.VERSION_PREFIX}{package}"] = version(package)
        except PackageNotFoundError:
            pass
    if check.overlaps:
        tags[tracking.DATA_OVERLAPS] = ",".join(f"{k}={v}" for k, v in check.overlaps.items())
    if check.data.allow_overlap:
        tags[tracking.ALLOW_OVERLAP] = "true"
    tags |= {
        f"{tracking.FINGERPRINT_PREFIX}{split}": value
        for split, value in check.fingerprints.items()
    }
    tags |= {
        tracking.ON_BAD_IMAGE: check.data.on_bad_image,
        tracking.SKIPPED_IMAGES: str(len(check.skipped)),
    }
    return tags


def search_inputs(data: DataConfig, holdout: Holdout) -> list[dict]:
    """The datasets the search's trials read, as MLflow inputs: trainset (training) and valset's
    selection part (validation), with digests of their names and labels."""
    val = read_split(data, "val").only(holdout.select_names)
    return [
        tracking.dataset_input(read_split(data, "train"), "trainset", "training", data.root),
        tracking.dataset_input(val, "valset-selection", "validation", data.root),
    ]


def open_tracking(
    cfg: SearchConfig, resume: bool, check: DataCheck, holdout: Holdout, out_dir: Path
) -> tuple[Tracker, str, str]:
    """The tracker, experiment and parent run of the search (the same parent run on a resume)."""
    uri, artifacts = resolve_tracking(cfg.tracking)
    tracker = Tracker(uri, artifacts, spool_dir=out_dir.resolve() / SPOOL_DIR)
    experiment_id = tracker.experiment_id(cfg.name)
    tracker.replay()  # writes a killed driver kept while the store was down go first
    resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    parent_id = tracker.search_run(
        experiment_id,
        cfg.name,
        resume,
        resolved,
        check.data.root,
        provenance(check) | source_tags(cfg.source) | tracking.holdout_tags(holdout),
    )
    save_holdout(out_dir, holdout)
    if not resume:
        tracker.log_inputs(parent_id, search_inputs(check.data, holdout))
    if holdout.honest and not resume:
        # the report part's names, so that a final stage on a changed valset scores only those
        with tempfile.TemporaryDirectory(prefix="ffdi-holdout-") as tmp:
            names = write_atomic(
                Path(tmp) / REPORT_NAMES_FILE, report_names_json(holdout.report_names)
            )
            tracker.log_artifact(parent_id, names, artifact_path="holdout")
    if check.skipped:
        with tempfile.TemporaryDirectory(prefix="ffdi-skipped-") as tmp:
            listing = pd.DataFrame(check.skipped, columns=["split", "img_name", "reason"])
            tracker.log_artifact(
                parent_id,
                write_atomic(Path(tmp) / "skipped_images.csv", listing.to_csv(index=False)),
            )
    return tracker, experiment_id, parent_id


def live_budget(
    cfg: SearchConfig,
    out_dir: Path,
    resume: bool,
    extra_time_s: float | None,
    check: DataCheck,
    holdout: Holdout,
    final_stage: tuple[int, int | None],
    echo,
    started: float | None = None,
) -> LiveBudget | None:
    """The time budget of this run of the driver, with its estimate of the final stage's share.

    ``final_stage`` is (how many times the final stage scores each image, how many trials it
    scores at most); ``started`` is the ``time.monotonic()`` at which this run of the driver began:
    the set-up before the trials counts against the budget too.
    """
    total = cfg.search.time_budget
    budget = (
        TimeBudget.resume(out_dir, extra_time_s, total, started=started)
        if resume
        else TimeBudget(total, folder=out_dir, started=started)
        if total
        else None
    )
    if budget is None:
        return None
    echo(
        f"time budget: {format_duration(budget.remaining())} left of "
        f"{format_duration(budget.total_s)} ({format_duration(budget.used_before_s)} used before); "
        "the final stage's share is kept back"
    )
    images = check.summary["val"]["images"] + check.summary["test"]["images"]
    per_eval = len(holdout.select_names) * (2 if cfg.robust_val.enabled else 1)
    passes, pool = final_stage
    return LiveBudget(budget, FinalStageEstimate(images, passes, per_eval, pool))


def trial_run_ids(
    tracker: Tracker, experiment_id: str, parent_id: str, known: dict[str, str]
) -> dict[str, str]:
    """Trial id -> MLflow run id of every trial of the search (``known``: the driver's own map, used
    while the tracking store is down)."""
    if tracker.replay():
        return {t.trial_id: t.run_id for t in tracker.trials_of(experiment_id, parent_id)}
    return {t: tracker.resolve(r) for t, r in known.items()}  # the store is still down


def finish_tracking(
    cfg: SearchConfig,
    tracker: Tracker,
    experiment_id: str,
    parent_id: str,
    rows: list[TrialRow],
    trials_csv: Path,
    echo,
) -> None:
    """The parent run's summary (plots when the store answers), then FINISHED."""
    searched = sorted(
        {k.split(CONDITIONAL_SEP)[0] for k in cfg.space}
        | {k for overrides in cfg.per_backbone.values() for k in overrides}
    )
    if tracker.pending():
        tracker.log_artifact(parent_id, trials_csv)  # kept; the plots need the store's run times
    else:
        try:
            summarise_search(
                tracker, experiment_id, parent_id, rows, cfg.search.metric, trials_csv, searched
            )
        # the store went away just now: the trials are safe, the plots can wait
        except Exception as exc:
            if not unreachable(exc):
                raise
            echo(f"MLflow at {tracker.uri} stopped answering; the search history plots are skipped")
            tracker.log_artifact(parent_id, trials_csv)
    tracker.finish(parent_id, "FINISHED")
    if tracker.pending():
        storage = (
            ""
            if cfg.search.storage == "runs" or is_bucket_uri(cfg.search.storage)
            else f" --storage {cfg.search.storage}"
        )
        echo(
            f"MLflow at {tracker.uri} is unreachable: {tracker.pending()} tracking write(s) are "
            f"kept in {tracker.spool.folder}, nothing is lost; once it is back, run: ffdi-tune "
            f"sync {cfg.name}{storage}"
        )
