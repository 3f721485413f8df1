"""The search runner: :func:`run_search` as a list of steps.

Ray is imported here and in the modules of the Tune side only: :mod:`~ffdi_tune.search.cluster`
(the Ray to run on), :mod:`~ffdi_tune.search.rounds` (the Tune experiments),
:mod:`~ffdi_tune.search.searcher` and :mod:`~ffdi_tune.search.callbacks` (what Tune asks before and
after each trial). The steps around the trials are in :mod:`~ffdi_tune.search.setup` and
:mod:`~ffdi_tune.search.summary`; each trial is :mod:`~ffdi_tune.search.trainable`.

``--resume`` finishes the last round of trials, then adds a round when the search is asked for
more trials (``--num-samples``) or more time (``--time-budget``) than it has had.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from ffdi_tune import tracking
from ffdi_tune.config import SearchConfig
from ffdi_tune.data.check import DataCheck
from ffdi_tune.data.holdout import Holdout
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import SearchError, SearchInterrupted
from ffdi_tune.files import is_bucket_uri
from ffdi_tune.search.budget import TimeBudget
from ffdi_tune.search.callbacks import BudgetClock, MlflowTrials
from ffdi_tune.search.cluster import (
    check_cluster_paths,
    connect,
    ray_address,
    trial_resources,
    warm_node_caches,
)
from ffdi_tune.search.further import train_best_further
from ffdi_tune.search.plan import SearchPlan, plan_for_run
from ffdi_tune.search.rounds import fit_rounds, make_searcher, round_path, trial_rows
from ffdi_tune.search.searcher import LiveBudget, attach_budget, detach_budget
from ffdi_tune.search.setup import (
    cache_entries,
    finish_tracking,
    holdout_for_search,
    live_budget,
    open_tracking,
    prepare_data,
    search_inputs,
    trial_run_ids,
    warm_cache,
)
from ffdi_tune.search.trainable import make_trainable
from ffdi_tune.search.trials_table import TrialRow, write_trials_csv
from ffdi_tune.tracking import Tracker

__all__ = [
    "SearchOutcome",
    "run_search",
    "search_dir",
    "make_searcher",
    "experiment_path",
]


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
    final_reserve_s: float | None = None  # what the budget kept for the final stage at the end


def search_dir(cfg: SearchConfig) -> tuple[str, Path]:
    """(Ray storage path, local output folder) of the search; the storage path may be a URI."""
    if is_bucket_uri(cfg.search.storage):
        # Ray keeps its state in the bucket; the trials table and submission stay on this machine.
        return cfg.search.storage, Path("runs").resolve() / cfg.name
    storage = Path(cfg.search.storage.removeprefix("file://")).expanduser().resolve()
    return str(storage), storage / cfg.name


def experiment_path(storage_path: str, name: str) -> str:
    """``<storage>/<name>``: where the search's first round (Tune experiment) lives."""
    return round_path(storage_path, name)


def _check_name(cfg: SearchConfig, exp_path: str, resume: bool) -> None:
    exists = tune.Tuner.can_restore(exp_path)
    if exists and not resume:
        raise SearchError(
            f"search {cfg.name!r} already exists at {exp_path}; pass --resume to continue it, or "
            "--name NEW to start another"
        )
    if resume and not exists:
        raise SearchError(
            f"--resume: no search {cfg.name!r} at {exp_path} to continue; run it without --resume"
        )


def _interrupted(
    cfg: SearchConfig,
    rows: list[TrialRow],
    planned: int,
    live: LiveBudget | None,
    exp_path: str,
    echo,
) -> SearchInterrupted | None:
    """Why the search must be resumed (Tune caught SIGINT/SIGTERM and returned early), or None."""
    spent = live is not None and not live.room_for_a_trial()
    if spent:
        cut = sum(r.status == "CUT" for r in rows)
        echo(f"time budget: spent; {len(rows)} trial(s) ran, {cut} ended by it")
        return None
    if len(rows) < planned or any(r.status == "INTERRUPTED" for r in rows):
        done = sum(r.status in ("FINISHED", "STOPPED", "CUT") for r in rows)
        return SearchInterrupted(
            f"search {cfg.name!r} interrupted with {done} of {planned} trials done (state saved "
            f"in {exp_path}); continue it with the same command plus --resume"
        )
    return None


@dataclass
class _Connected:
    """What the driver holds once Ray runs and the search's MLflow runs are open."""

    tracker: Tracker
    experiment_id: str
    parent_id: str
    resources: dict
    started_ray: bool

    def release(self, status: str | None) -> None:
        """Close the parent run as ``status`` (None: leave it) and shut Ray down if started here."""
        if status is not None:
            self.tracker.finish(self.parent_id, status)
        if self.started_ray:
            ray.shutdown()

    @contextlib.contextmanager
    def released_on_failure(self):
        """Ctrl-C or a fault in the block: leave no Ray running and no run RUNNING (FAILED)."""
        try:
            yield
        except BaseException:
            self.release("FAILED")
            raise


def _connect_and_open(
    cfg: SearchConfig,
    address: str | None,
    check: DataCheck,
    holdout: Holdout,
    storage_path: str,
    out_dir: Path,
    resume: bool,
    echo,
) -> _Connected:
    """Start (or join) Ray, check what its nodes see, build the decode caches, open the MLflow runs.

    A local search builds its caches before Ray starts, with every CPU; on a cluster every trial
    node builds its own. Ray is shut down again (when started here) if any step fails.
    """
    started_ray = not ray.is_initialized()
    where = ray_address(address or cfg.address)
    local = started_ray and where == "local"
    if local:
        warm_cache(cfg, check.data, holdout, echo=echo)
    if started_ray:
        connect(where)
    try:
        resources = trial_resources(cfg)  # before anything is written to the tracking store
        check_cluster_paths(check.data, storage_path, resources)
        if not local:
            warm_node_caches(cache_entries(cfg, check.data, holdout), check.data, resources, echo)
        tracker, experiment_id, parent_id = open_tracking(cfg, resume, check, holdout, out_dir)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    return _Connected(tracker, experiment_id, parent_id, resources, started_ray)


def _note_plan(on: _Connected, plan: SearchPlan | None, live: LiveBudget | None) -> None:
    """The plan on the search run, and the probe's scoring speed as the final stage's first
    estimate (the trials' own replace it as they report)."""
    if plan is None:
        return
    if live is not None:
        live.final_stage.per_image_s = max(live.final_stage.per_image_s, plan.eval_image_s)
        live.shortest_trial_s, live.first_rung = plan.first_rung_s, plan.rungs[0]
    fields = {k: v for k, v in plan.as_dict().items() if k != "notes"}
    on.tracker.set_tags(
        on.parent_id, {f"{tracking.PLAN_PREFIX}{k}": str(v) for k, v in fields.items()}
    )


def _run_trials(
    cfg: SearchConfig,
    on: _Connected,
    data: DataConfig,
    holdout: Holdout,
    paths: tuple[str, str, Path],
    resume: bool,
    grow: bool,
    live: LiveBudget | None,
    plan: SearchPlan | None = None,
    echo=print,
) -> tuple[list, int, dict[str, str]]:
    """Every round of trials, to its end, watched from the driver by :class:`BudgetClock` and
    :class:`MlflowTrials`, then the best trained further with the time a budget has to spare:
    every round's ResultGrid, how many trials were planned, and trial id -> run id as the driver
    knows them. Then Ray is shut down (when started here) and no trial run is left RUNNING.
    Ctrl-C becomes :class:`SearchInterrupted`, with the parent run KILLED."""
    storage_path, exp_path, out_dir = paths
    fixed = cfg.train.model_dump()
    mirror = MlflowTrials(
        on.tracker,
        on.experiment_id,
        on.parent_id,
        fixed,
        len(holdout.select_names),
        cfg.name,
        search_inputs(data, holdout),
    )
    # the clock first: Tune calls them in order, and a trial's cut is decided before its tags
    callbacks = [BudgetClock(cfg.name, fixed), mirror]
    status = "FAILED"
    try:
        if live is not None:
            attach_budget(cfg.name, live)
            # A trial the budget ends before its first epoch reports no metric: Tune would take
            # that for a mistyped metric name and stop the search (TPE records it as pruned).
            os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        trainable = make_trainable(cfg, data, holdout, on.resources, live)
        grids, planned = fit_rounds(
            cfg, trainable, callbacks, storage_path, exp_path, out_dir, resume, grow, live
        )
        epoch_s = plan.trial_epoch_s if plan else None
        grids += train_best_further(
            cfg, trainable, callbacks, grids, exp_path, out_dir, live, epoch_s, echo
        )
        status = "FINISHED"
        return grids, planned, mirror.run_ids
    except KeyboardInterrupt:
        status = "KILLED"
        raise SearchInterrupted(
            f"search {cfg.name!r} interrupted; continue it with the same command plus --resume"
        ) from None
    finally:
        detach_budget(cfg.name)
        if live is not None:
            live.budget.save()
        on.tracker.close_unfinished(on.experiment_id, on.parent_id, "KILLED")
        on.release(None if status == "FINISHED" else status)


def _trials_table(
    cfg: SearchConfig,
    on: _Connected,
    grids: list,
    known: dict[str, str],
    live: LiveBudget | None,
    out_dir: Path,
) -> tuple[list[TrialRow], Path]:
    """Every trial of every round as a row, ranked into ``out_dir/trials.csv``; ``known`` maps trial
    ids to the run ids the driver made (used while the tracking store is down)."""
    run_ids = trial_run_ids(on.tracker, on.experiment_id, on.parent_id, known)
    cut = live.budget.cut if live else set()
    rows = trial_rows(grids, run_ids, cfg.train.model_dump(), cfg.search.metric, cut)
    return rows, write_trials_csv(rows, out_dir / "trials.csv", cfg.search.metric)


def _close_search(
    cfg: SearchConfig,
    on: _Connected,
    rows: list[TrialRow],
    trials_csv: Path,
    planned: int,
    live: LiveBudget | None,
    exp_path: str,
    echo,
) -> None:
    """Close the parent run: KILLED with :class:`SearchInterrupted` raised when the search must be
    resumed, else summarised and FINISHED."""
    interrupted = _interrupted(cfg, rows, planned, live, exp_path, echo)
    if interrupted is not None:
        on.tracker.finish(on.parent_id, "KILLED")
        raise interrupted
    finish_tracking(cfg, on.tracker, on.experiment_id, on.parent_id, rows, trials_csv, echo)


def run_search(
    cfg: SearchConfig,
    *,
    resume: bool = False,
    address: str | None = None,
    extra_time_s: float | None = None,
    final_stage_passes: int = 2,
    final_stage_pool: int | None = None,
    echo=print,
) -> SearchOutcome:
    """Run (or resume, or extend) the search ``cfg`` to the end and return its ranked trials.

    ``extra_time_s`` gives a resumed search that much more time than it has used (``--time-budget``
    with ``--resume``); ``final_stage_passes`` is how many times the final stage will score each
    image (its TTA views; 0 when it will not run) and ``final_stage_pool`` how many trials it scores
    at most (None: all), for the share of a time budget kept for it.
    Raises :class:`SearchError` for an existing name without ``resume`` (or nothing to resume) and
    :class:`SearchInterrupted` when Ctrl-C / SIGTERM stopped it with its state saved.
    """
    t0, clock_start = time.perf_counter(), time.monotonic()
    storage_path, out_dir = search_dir(cfg)
    exp_path = experiment_path(storage_path, cfg.name)
    _check_name(cfg, exp_path, resume)
    check = prepare_data(cfg, echo)
    final_stage = (final_stage_passes, final_stage_pool)
    used_s = time.monotonic() - clock_start
    cfg, plan = plan_for_run(cfg, out_dir, resume, check, used_s, final_stage, echo)
    holdout = holdout_for_search(cfg, check.data, out_dir, resume, echo)
    on = _connect_and_open(cfg, address, check, holdout, storage_path, out_dir, resume, echo)
    with on.released_on_failure():
        live = live_budget(
            cfg, out_dir, resume, extra_time_s, check, holdout, final_stage, echo, clock_start
        )
        _note_plan(on, plan, live)
    paths = (storage_path, exp_path, out_dir)
    grow = resume and extra_time_s is not None  # more time: a finished search gets a new round
    grids, planned, run_ids = _run_trials(
        cfg, on, check.data, holdout, paths, resume, grow, live, plan, echo
    )
    rows, trials_csv = _trials_table(cfg, on, grids, run_ids, live, out_dir)
    _close_search(cfg, on, rows, trials_csv, planned, live, exp_path, echo)
    return SearchOutcome(
        cfg.name,
        out_dir,
        exp_path,
        on.tracker.uri,
        on.experiment_id,
        on.parent_id,
        rows,
        trials_csv,
        time.perf_counter() - t0,
        check.data,
        on.tracker.pending(),
        live.budget if live else None,
        live.reserve() if live else None,
    )
