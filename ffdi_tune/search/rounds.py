"""A search's rounds: each a Tune experiment of trials proposed by TPE and stopped early by ASHA.

The first round lives at ``<storage>/<name>``, later ones at ``<storage>/<name>/round-<k>``, each
proposed by a searcher restored from the round before, so TPE continues from everything it has
learned. :func:`fit_rounds` runs a new search's first round, or finishes a resumed search's last
round and adds one when it should end with more trials (:func:`trials_wanted`); ``rounds.json`` in
the search's output folder records the rounds. :func:`trial_rows` reads every round back as the
rows of the trials table.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from ffdi_tune.config import SearchConfig
from ffdi_tune.files import is_bucket_uri, write_atomic
from ffdi_tune.scoring.epoch_metrics import best_value
from ffdi_tune.search.callbacks import progress
from ffdi_tune.search.default_recipe import default_point
from ffdi_tune.search.searcher import BudgetStopper, LiveBudget, TrialSearcher
from ffdi_tune.search.space import (
    CONDITIONAL_SEP,
    CONTINUE_FROM_KEY,
    DEFAULT_RECIPE_KEY,
    DefineByRun,
)
from ffdi_tune.search.trials_table import TrialRow
from ffdi_tune.training.checkpoint import STAND_IN_FILE

__all__ = [
    "ROUNDS_FILE",
    "STUDY_FILE",
    "export_study",
    "make_searcher",
    "fit_rounds",
    "trials_wanted",
    "DefaultKeepingASHA",
    "load_rounds",
    "save_rounds",
    "fit_round",
    "checkpoint_location",
    "trials_and_results",
    "trial_rows",
    "round_path",
]

ROUNDS_FILE = "rounds.json"  # in a search's output folder: its rounds' experiment paths and sizes
STUDY_FILE = "optuna.db"  # in a search's output folder: a copy of its Optuna study


def round_path(storage_path: str, name: str) -> str:
    """``<storage>/<name>``; a URI keeps its query (``s3://b/p?endpoint_override=...``) last."""
    base, sep, query = storage_path.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def checkpoint_location(checkpoint) -> str:
    """A checkpoint's folder as a path, or a URI (``s3://bucket/...``) when it lives in a bucket."""
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def make_searcher(cfg: SearchConfig) -> TrialSearcher:
    """TPE over the config's space, seeded by ``search.seed``: same config, same proposals.

    With ``search.tpe_multivariate``: Optuna's multivariate TPE, grouped (the space is defined by
    run: each backbone brings its own keys), with ``constant_liar`` when trials run concurrently.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-study info lines are noise here
    joint = cfg.search.tpe_multivariate
    with warnings.catch_warnings():
        # multivariate, group and constant_liar are marked experimental; their use is deliberate
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=cfg.search.seed,
            n_startup_trials=cfg.search.tpe_startup_trials,
            multivariate=joint,
            group=joint,
            constant_liar=joint and cfg.search.max_concurrent > 1,
        )
    return TrialSearcher(
        space=DefineByRun.from_config(cfg),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        sampler=sampler,
        search_name=cfg.name,
    )


def _restored_searcher(cfg: SearchConfig, path: str) -> TrialSearcher:
    """A searcher that continues from the state the round at ``path`` saved last."""
    searcher = make_searcher(cfg)
    if not is_bucket_uri(path):
        searcher.restore_from_dir(path)
        return searcher
    import pyarrow.fs

    fs, folder = pyarrow.fs.FileSystem.from_uri(path)
    states = [
        f
        for f in fs.get_file_info(pyarrow.fs.FileSelector(folder))
        if Path(f.path).name.startswith("searcher-state-")
    ]
    with tempfile.TemporaryDirectory(prefix="ffdi-searcher-") as tmp:
        for f in states:
            with (
                fs.open_input_stream(f.path) as src,
                open(Path(tmp) / Path(f.path).name, "wb") as dst,
            ):
                dst.write(src.read())
        searcher.restore_from_dir(tmp)
    return searcher


class DefaultKeepingASHA(ASHAScheduler):
    """ASHA that never stops the default recipe early: it is the one well-run recipe the search
    must beat, so it trains to full length (its values still count at every rung)."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and trial.config.get(DEFAULT_RECIPE_KEY):
            return TrialScheduler.CONTINUE
        return decision


def _scheduler(cfg: SearchConfig):
    if cfg.scheduler.type == "asha":
        return DefaultKeepingASHA(
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            time_attr="epoch",
            max_t=cfg.scheduler.max_epochs or cfg.max_epochs(),
            grace_period=cfg.scheduler.grace_period,
            reduction_factor=cfg.scheduler.reduction_factor,
        )
    return FIFOScheduler()


def _new_round(
    cfg: SearchConfig,
    trainable,
    callbacks: list[tune.Callback],
    storage: str,
    name: str,
    num_samples: int,
    searcher: TrialSearcher,
) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=_scheduler(cfg),
            num_samples=num_samples,
            max_concurrent_trials=cfg.search.max_concurrent,
            reuse_actors=cfg.search.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=1,
            callbacks=list(callbacks),  # a list of its own: Tune adds its defaults to it
            stop=BudgetStopper(cfg.name),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        ),
    )


def stand_in_for_deleted_checkpoints(exp_path: str) -> list[Path]:
    """Copy each trial's newest checkpoint under the number before it, where that one is gone.

    Tune keeps one checkpoint per trial (``num_to_keep=1``): registering a trial's checkpoint N
    deletes N-1 at once, and the experiment state that names N is written a moment later. A driver
    killed in between leaves a state naming N-1, which no longer exists, and Tune then fails the
    trial on resume ("Could not recover from checkpoint"). The copy of N in its place lets the
    trial continue from its newest epoch (its ``last.pt`` says which); Tune deletes the stand-in
    with its next checkpoint. A local experiment folder only (a bucket is left as it is). Returns
    the stand-ins made.
    """
    if is_bucket_uri(exp_path) or not Path(exp_path).is_dir():
        return []
    made = []
    for trial_dir in Path(exp_path).iterdir():
        numbers = sorted(
            int(d.name.removeprefix("checkpoint_"))
            for d in trial_dir.glob("checkpoint_*")
            if d.is_dir() and d.name.removeprefix("checkpoint_").isdigit()
        )
        if not numbers or numbers[-1] == 0 or numbers[-1] - 1 in numbers:
            continue
        newest = trial_dir / f"checkpoint_{numbers[-1]:06d}"
        stand_in = trial_dir / f"checkpoint_{numbers[-1] - 1:06d}"
        shutil.copytree(newest, stand_in)
        (stand_in / STAND_IN_FILE).write_text(newest.name)
        made.append(stand_in)
    return made


def _resume_last_round(rounds: list[dict], trainable, out_dir: Path, live):
    """(whether the last round had finished, its results once resumed to its end)."""
    stand_ins = stand_in_for_deleted_checkpoints(rounds[-1]["path"])
    tuner = tune.Tuner.restore(rounds[-1]["path"], trainable=trainable, resume_errored=True)
    was_finished = rounds[-1]["finished"]
    if was_finished is None:  # a round rounds.json did not record: ask its own state
        was_finished = _all_ended(tuner.get_results())
    grid = _finish_round(tuner, rounds, out_dir, live)
    remove_unused(stand_ins, grid)
    return was_finished, grid


def remove_unused(stand_ins: list[Path], grid) -> None:
    """Remove the stand-ins no trial of the finished round ``grid`` ended on (Tune's state named
    the newer checkpoint after all, or the trial has saved newer ones since)."""
    kept = {str(Path(r.checkpoint.path)) for r in grid if r.checkpoint is not None}
    for stand_in in stand_ins:
        if stand_in.is_dir() and str(stand_in) not in kept:
            shutil.rmtree(stand_in, ignore_errors=True)


def load_rounds(out_dir: Path, exp_path: str) -> list[dict]:
    """The rounds ``rounds.json`` recorded; without it (a resume on another machine, with bucket
    storage) the first round only, its size and whether it finished unknown until it is read."""
    path = out_dir / ROUNDS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return [{"path": exp_path, "num_samples": None, "finished": None}]


def save_rounds(out_dir: Path, rounds: list[dict]) -> None:
    write_atomic(out_dir / ROUNDS_FILE, json.dumps(rounds, indent=1))


def trials_wanted(have: int, num_samples: int, grow: bool, finished: bool, planned: int = 0) -> int:
    """How many trials a resumed search should end with.

    ``have`` trials exist once its last round is finished; ``planned`` is how many its rounds
    planned before this resume. A plain resume runs until the search has ``num_samples``
    (``--num-samples`` raises it). One asked for more time (``grow``) first finishes what it
    planned (an interrupted search, or one its budget cut short), and only a search that had done
    all of that gets ``num_samples`` more.

    >>> trials_wanted(4, 6, grow=False, finished=True), trials_wanted(4, 4, True, finished=True)
    (6, 8)
    >>> trials_wanted(4, 4, grow=True, finished=False), trials_wanted(11, 8, True, True, planned=16)
    (4, 16)
    """
    if not grow:
        return num_samples
    target = max(num_samples, planned)
    return have + num_samples if finished and have >= target else max(target, have)


def fit_rounds(
    cfg: SearchConfig,
    trainable,
    callbacks: list[tune.Callback],
    storage_path: str,
    exp_path: str,
    out_dir: Path,
    resume: bool,
    grow: bool,
    live: LiveBudget | None,
) -> tuple[list, int]:
    """Run the search's rounds; return every round's ResultGrid and how many trials were planned.

    On a resume the last round is finished first (the earlier ones are only read back), then a new
    round is added while fewer trials exist than :func:`trials_wanted` says (``grow``: a new time
    budget on a finished search adds up to ``num_samples`` more). ``rounds.json`` records each
    round and whether it ran all its trials to their end (``finished``).
    """
    if not resume:
        n = cfg.search.num_samples
        rounds = [{"path": exp_path, "num_samples": n, "finished": False}]
        save_rounds(out_dir, rounds)
        searcher = make_searcher(cfg)
        if cfg.search.default_trial:
            searcher.enqueue_default(default_point(cfg))
        tuner = _new_round(cfg, trainable, callbacks, storage_path, cfg.name, n, searcher)
        grids = [fit_round(tuner, rounds, out_dir, live)]
        export_study(searcher.study, out_dir, cfg.name)
        return grids, n
    rounds = load_rounds(out_dir, exp_path)
    if len(rounds) > 1 and not tune.Tuner.can_restore(rounds[-1]["path"]):
        rounds.pop()  # added just before the driver died, before Tune wrote anything of it
    grids = [tune.Tuner.restore(r["path"], trainable=trainable).get_results() for r in rounds[:-1]]
    planned = sum(r["num_samples"] or 0 for r in rounds)
    # The restored run config brings back its pickled callbacks: MlflowTrials finds the same parent
    # run and re-attaches to existing child runs by their ffdi.trial_id tag.
    was_finished, grid = _resume_last_round(rounds, trainable, out_dir, live)
    grids.append(grid)
    have = sum(len(g) for g in grids)
    want = trials_wanted(have, cfg.search.num_samples, grow, was_finished, planned)
    if have < want and _all_ended(grids[-1]) and (live is None or live.room_for_a_trial()):
        # what the last round did not run (its budget cut it short) is planned in the new one
        rounds[-1]["num_samples"] = len(grids[-1])
        name = f"round-{len(rounds) + 1}"
        rounds.append(
            {"path": round_path(exp_path, name), "num_samples": want - have, "finished": False}
        )
        save_rounds(out_dir, rounds)
        # TPE continues from the last round it proposed (a round training the best further has none)
        searched = [r for r in rounds[:-1] if not r.get("further")]
        searcher = _restored_searcher(cfg, searched[-1]["path"])
        tuner = _new_round(cfg, trainable, callbacks, exp_path, name, want - have, searcher)
        grids.append(fit_round(tuner, rounds, out_dir, live))
    searched = [r for r in rounds if not r.get("further")]
    export_study(_restored_searcher(cfg, searched[-1]["path"]).study, out_dir, cfg.name)
    return grids, sum(r["num_samples"] for r in rounds)


def _finish_round(tuner, rounds: list[dict], out_dir: Path, live: LiveBudget | None):
    """A resumed round run to its end, or only read back when the budget is spent: the trials it
    had queued would only start to be cut."""
    if live is not None and live.budget.trial_s and not live.room_for_a_trial():
        return tuner.get_results()
    return fit_round(tuner, rounds, out_dir, live)


def export_study(study, out_dir: Path, name: str) -> Path:
    """Copy the search's Optuna study (every trial TPE was told of, with its values per epoch) into
    ``optuna.db`` in the search's output folder, replacing an earlier copy: ``optuna-dashboard
    sqlite:///runs/<name>/optuna.db`` opens it."""
    path = Path(out_dir) / STUDY_FILE
    url = f"sqlite:///{path.resolve()}"
    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:  # the first export
        pass
    copy = optuna.create_study(study_name=name, storage=url, directions=study.directions)
    copy.add_trials([t for t in study.trials if t.state.is_finished()])
    return path


def fit_round(tuner: tune.Tuner, rounds: list[dict], out_dir: Path, live: LiveBudget | None):
    """Run the last round until it ends (or Ctrl-C); record whether it ran every trial it planned
    (or all its budget allowed) to its end."""
    grid = tuner.fit()
    last = rounds[-1]
    last["num_samples"] = last["num_samples"] or len(grid)  # a round rounds.json did not record
    spent = live is not None and not live.room_for_a_trial()
    last["finished"] = _all_ended(grid) and (len(grid) >= last["num_samples"] or spent)
    save_rounds(out_dir, rounds)
    return grid


def _all_ended(grid) -> bool:
    """Whether every trial of a round ended (none pending, running or paused: Ctrl-C left none)."""
    return not any(s == "INTERRUPTED" for s in _statuses(grid))


def trials_and_results(grid) -> list:
    """(Tune trial, Result) pairs of a ResultGrid. The public Result lacks the trial's id and status
    (pending, running, terminated, errored); only the grid's analysis object keeps them."""
    return list(zip(grid._experiment_analysis.trials, grid, strict=True))


def _statuses(grid) -> list[str]:
    return [
        "INTERRUPTED" if t.status not in ("TERMINATED", "ERROR") else t.status
        for t, _ in trials_and_results(grid)
    ]


def _last_line(error: BaseException) -> str:
    """The last non-empty line of an error's text (a trial's traceback ends with its cause)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def trial_rows(
    grids: list, run_ids: dict[str, str], fixed: dict, metric: str, cut: set[str]
) -> list[TrialRow]:
    """One row per trial of every round of a finished (or interrupted) search."""
    rows = []
    for grid in grids:
        for trial, result in trials_and_results(grid):
            history = result.metrics_dataframe
            best = best_value(
                metric,
                history[metric].dropna() if history is not None and metric in history else [],
            )
            epochs_run, planned = progress(trial, fixed)
            if result.error:
                status = "FAILED"
            elif trial.trial_id in cut:
                status = "CUT"  # the time budget ended it
            elif trial.status not in ("TERMINATED", "ERROR"):
                status = "INTERRUPTED"  # pending, running or paused when the driver stopped
            else:
                status = "STOPPED" if epochs_run < planned else "FINISHED"
            rows.append(
                TrialRow(
                    trial_id=trial.trial_id,
                    run_id=run_ids.get(trial.trial_id, ""),
                    status=status,
                    best=best,
                    epochs_run=epochs_run,
                    params={
                        k.split(CONDITIONAL_SEP)[0]: v
                        for k, v in trial.config.items()
                        if k != CONTINUE_FROM_KEY  # a checkpoint's path, not a setting
                    },
                    checkpoint=checkpoint_location(result.checkpoint) if result.checkpoint else "",
                    error=_last_line(result.error) if result.error else "",
                )
            )
    return rows
