"""Command line: parse, call, and turn the project's errors into one line and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ffdi_tune.errors import FfdiError, SearchInterrupted

__all__ = ["main", "build_parser"]


def _cmd_run(args: argparse.Namespace) -> int:
    from ffdi_tune.config import load_search_config, resolve_shipped

    args.space = str(resolve_shipped(args.space))
    cfg = load_search_config(args.space, _run_overrides(args))
    extra_time_s = _more_time(args)
    recipe = None
    if cfg.ensemble and not args.no_ensemble:
        from ffdi_tune.ensemble.recipe import load_recipe

        recipe = load_recipe(cfg.ensemble)  # a bad recipe fails now, not after the search
        _check_top_k(cfg, recipe, args.resume)
    # Ray is imported only once the config is known to be valid.
    from ffdi_tune.search.runner import run_search

    size = (
        f"{cfg.search.num_samples} trials, {cfg.search.max_concurrent} at a time"
        if not cfg.search.time_budget or args.resume
        else "trials planned from its time budget"
    )
    print(f"search {cfg.name}: {size}, metric {cfg.search.metric}", flush=True)
    with _search_lock(cfg):
        outcome = run_search(
            cfg,
            resume=args.resume,
            address=args.address,
            extra_time_s=extra_time_s,
            final_stage_passes=recipe.passes_per_image if recipe is not None else 0,
            final_stage_pool=recipe.pool_size if recipe is not None else None,
        )
        _print_trials(outcome, cfg.search.metric)
        if outcome.rows and all(row.status == "FAILED" for row in outcome.rows):
            _print_all_failed(outcome.rows)
            return 1
        submission = (
            _final_stage(cfg, recipe, outcome, args.address) if recipe is not None else None
        )
    _print_where_results_are(args, cfg, outcome, submission)
    return 0


def _check_top_k(cfg, recipe, resume: bool) -> None:
    """Without a time budget a search runs exactly ``num_samples`` trials: a recipe asking for
    more members than that is refused before anything runs (a budget plans its own count, and a
    budget-cut search ships with what finished)."""
    from ffdi_tune.errors import ConfigError

    if cfg.search.time_budget or resume or recipe.top_k <= cfg.search.num_samples:
        return
    raise ConfigError(
        f"{cfg.ensemble}: top_k={recipe.top_k}, but the search runs {cfg.search.num_samples} "
        f"trial(s) (search.num_samples); raise --num-samples to {recipe.top_k} or lower top_k"
    )


def _check_out(out) -> None:
    """``--out`` must name a file that can be written: not a folder."""
    from ffdi_tune.errors import ConfigError

    if out is not None and Path(out).is_dir():
        example = Path(out) / "submission.csv"
        raise ConfigError(f"--out {out} is a folder; name the CSV file to write, e.g. {example}")


def _cmd_check(args: argparse.Namespace) -> int:
    from ffdi_tune.config import load_search_config, resolve_shipped

    args.space = str(resolve_shipped(args.space))
    cfg = load_search_config(args.space, _run_overrides(args))
    recipe = None
    if cfg.ensemble and not args.no_ensemble:
        from ffdi_tune.ensemble.recipe import load_recipe

        recipe = load_recipe(cfg.ensemble)
        _check_top_k(cfg, recipe, args.resume)
        print(f"ensemble: {cfg.ensemble} (top_k {recipe.top_k}, combine {recipe.combine})")
    from ffdi_tune.search.preflight import preflight
    from ffdi_tune.search.runner import experiment_path, search_dir

    storage_path, _ = search_dir(cfg)
    final_stage = (recipe.passes_per_image, recipe.pool_size) if recipe else (0, None)
    preflight(cfg, experiment_path(storage_path, cfg.name), final_stage)
    print(f"check: {args.space} is ready to run; nothing was trained or written under runs/")
    return 0


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted YAML keys that ``run``'s flags override (None: not given), then every ``--set``
    (the last of a key wins)."""
    from ffdi_tune.config import parse_setting

    named = {
        "data.root": args.data,
        "name": args.name,
        "search.num_samples": args.num_samples,
        "search.max_concurrent": args.max_concurrent,
        "train.epochs": args.epochs,
        "data.cache": False if args.no_cache else None,
        # on a fresh search --time-budget is the budget; on a resumed one, more time (_more_time)
        "search.time_budget": None if args.resume else args.time_budget,
    }
    return named | dict(parse_setting(text) for text in args.set or [])


def _more_time(args: argparse.Namespace) -> float | None:
    """Seconds of ``--time-budget`` given with ``--resume``, else None."""
    if not (args.resume and args.time_budget is not None):
        return None
    from ffdi_tune.durations import parse_duration
    from ffdi_tune.errors import ConfigError

    try:
        return parse_duration(args.time_budget)
    except ValueError as exc:
        raise ConfigError(f"--time-budget: {exc}") from None


def _print_trials(outcome, metric: str) -> None:
    """The search's trials table, and how many trials failed."""
    from ffdi_tune import tracking
    from ffdi_tune.search.trials_table import format_table

    print()
    print(format_table(outcome.rows, metric))
    print()
    failed = sum(row.status == "FAILED" for row in outcome.rows)
    if failed:
        print(f"{failed} trial(s) failed: the tag {tracking.ERROR} of their MLflow runs says why")


def _print_all_failed(rows) -> None:
    """Every trial failed: nothing to ensemble; the distinct errors, most frequent first."""
    from collections import Counter

    errors = Counter(row.error or "trial failed" for row in rows)
    print(
        f"every trial failed ({len(rows)}), so there is nothing to ensemble; the errors:",
        file=sys.stderr,
    )
    for error, n in errors.most_common(3):
        print(f"  {n} x {error[:300]}", file=sys.stderr)


def _final_stage(cfg, recipe, outcome, address: str | None = None) -> str | None:
    """Run the recipe's final stage on the search's trials; the submission it wrote, if any."""
    from ffdi_tune.tracking import resolve_tracking

    if outcome.tracking_pending:
        print(
            "ensemble stage skipped: it reads the trials from MLflow, which is unreachable; run "
            f"ffdi-tune sync {cfg.name}, then ffdi-tune ensemble {cfg.ensemble} --experiment "
            f"{cfg.name}"
        )
        return None
    from ffdi_tune.ensemble.final_stage import run_ensemble
    from ffdi_tune.tracking import Tracker

    print(f"ensemble stage: {cfg.ensemble}")
    started = time.perf_counter()
    tracker = Tracker(*resolve_tracking(cfg.tracking))
    stage = run_ensemble(
        recipe,
        recipe.experiments or [cfg.name],
        tracker,
        data_root=outcome.data.root,
        parent_run_id=outcome.parent_run_id,
        recipe_name=cfg.ensemble,
        refitter=_refitter(tracker, outcome, cfg, address),
    )
    _print_ensemble(stage)
    _note_final_stage_time(outcome, stage, time.perf_counter() - started)
    return stage.submission


def _refitter(tracker, outcome=None, cfg=None, address: str | None = None):
    """What trains a recipe's refits: the search's Ray Tune trials
    (:mod:`ffdi_tune.search.refit_trials`), as child runs of its search run, on the Ray the search
    used. After ``run``: the search's ``cfg``, data and parent run from its ``outcome``, and under
    a time budget until the final stage's share of it begins; for ``ensemble``: the search's
    recorded config and its latest search run, holding the search's lock (and lease) as ``run``
    does, since the refits write beside the search's rounds and under its run."""
    deadline = None
    if outcome is not None and outcome.budget is not None:
        deadline = outcome.budget.end_time() - (outcome.final_reserve_s or 0.0)

    def refit(jobs, val_names, config: dict, data_root: str) -> dict[str, list[str]]:
        from ffdi_tune.ensemble.search_record import search_data
        from ffdi_tune.search.refit_trials import run_refits
        from ffdi_tune.search.runner import search_dir

        search = cfg or _recorded_search(config)
        storage = search_dir(search)[0]
        # within run, the run already holds them
        with contextlib.nullcontext() if outcome else _search_lock(search):
            parent = outcome.parent_run_id if outcome else tracker.search_run_id(search.name)
            data = outcome.data if outcome else search_data(config, data_root)
            return run_refits(
                search, jobs, val_names, data, tracker, parent, storage,
                address=address, deadline=deadline,
            )  # fmt: skip

    return refit


def _search_lock(cfg):
    """One run of a search at a time: its lock on this machine, and with bucket storage its lease
    in the MLflow store (:func:`~ffdi_tune.search.lock.search_lock`)."""
    from ffdi_tune.files import is_bucket_uri
    from ffdi_tune.search.lock import search_lock
    from ffdi_tune.search.runner import search_dir

    lease_store = cfg.tracking if is_bucket_uri(cfg.search.storage) else None
    return search_lock(search_dir(cfg)[1], cfg.name, lease_store)


def _recorded_search(config: dict):
    """The search config a search recorded in MLflow, validated; one ``error:`` line when it
    cannot be (recorded by another version, or not at all)."""
    from pydantic import ValidationError

    from ffdi_tune.config import SearchConfig
    from ffdi_tune.errors import ConfigError

    try:
        return SearchConfig.model_validate(config)
    except ValidationError as exc:
        first = str(exc).splitlines()[1:2] or ["no config recorded"]
        raise ConfigError(
            f"refit needs the search's own config, but the one it recorded does not load here "
            f"({first[0].strip()}); refit from the machine that ran it with ffdi-tune run "
            "--resume, or remove refit from the recipe"
        ) from None


def _note_final_stage_time(outcome, stage, took_s: float) -> None:
    """With a time budget: what the final stage took against what the budget kept for it, said
    and logged on the ensemble run (``final_stage_s``, ``final_stage_reserve_s``)."""
    from ffdi_tune.tracking import Tracker

    if outcome.final_reserve_s is None:
        return
    reserve = outcome.final_reserve_s
    verdict = "within" if took_s <= reserve else "over"
    print(f"final stage: {took_s:.0f}s, {verdict} the {reserve:.0f}s the time budget kept for it")
    metrics = {"final_stage_s": took_s, "final_stage_reserve_s": reserve}
    Tracker(outcome.tracking_uri).log_metrics(stage.run_id, metrics, step=0)


def _print_where_results_are(args: argparse.Namespace, cfg, outcome, submission) -> None:
    """How long the search took and where its table, submission, results, cache and runs are."""
    from ffdi_tune.data.cache import cache_size_mb
    from ffdi_tune.data.layout import cache_dir_of
    from ffdi_tune.tracking import resolve_tracking

    uri, _ = resolve_tracking(cfg.tracking)
    ui = "ffdi-tune ui" + ("" if cfg.tracking.uri is None else f" --config {args.space}")
    print(f"done in {outcome.wall_s:.0f} s")
    print(f"trials table:   {outcome.trials_csv}")
    if submission:
        print(f"submission:     {submission}")
    print(f"ray results:    {outcome.storage_path}")
    study = Path(outcome.out_dir) / "optuna.db"
    if study.is_file():
        print(f"optuna study:   optuna-dashboard sqlite:///{study.resolve()}")
    cache = cache_dir_of(outcome.data)
    if cache is not None:
        print(
            f"decode cache:   {cache} ({cache_size_mb(cache):.0f} MB on this node; --no-cache "
            "turns it off)"
        )
    print(f"mlflow:         {uri} (experiment {cfg.name}, parent run {outcome.parent_run_id})")
    print(f"open the UI:    {ui}   then browse http://127.0.0.1:5000")


def _print_ensemble(stage) -> None:
    """The final stage's table, what it shipped with its estimate, and where the submission is."""
    from ffdi_tune import tracking
    from ffdi_tune.ensemble.table import REPORT_NOTE, format_ensemble_table

    result, metrics = stage.result, stage.result.metrics
    print()
    print(format_ensemble_table(result.table))
    members = len(result.members)
    shipped = f"ensemble {result.chosen} ({members} member{'s' if members > 1 else ''})"
    if result.honest:
        print(f"({REPORT_NOTE})")
        print(
            f"{shipped}: report-part AUC {metrics[tracking.HOLDOUT_AUC]:.4f}, 95% interval "
            f"{metrics[tracking.HOLDOUT_AUC_LOW]:.4f}-{metrics[tracking.HOLDOUT_AUC_HIGH]:.4f} "
            f"over its {len(result.report_targets)} images (TPR@FPR=1e-3 "
            f"{metrics[tracking.HOLDOUT_TPR]:.4f}); on the selection part, which chose it, "
            f"{metrics[tracking.SELECT_AUC]:.4f} vs the best member's "
            f"{metrics[tracking.BEST_MEMBER_SELECT_AUC]:.4f}"
        )
    else:
        print(
            f"{shipped}: no honest estimate: search.holdout.fraction is 0, so every valset image "
            f"took part in choosing; its selection-part AUC {metrics[tracking.SELECT_AUC]:.4f} is "
            "optimistic"
        )
    if tracking.HOLDOUT_AUC_BEFORE_REFIT in metrics:
        print(
            f"refit: report-part AUC {metrics[tracking.HOLDOUT_AUC_BEFORE_REFIT]:.4f} with the "
            f"search's models -> {metrics[tracking.HOLDOUT_AUC]:.4f} with their refits, trained "
            "on trainset + the selection part, in their place (the row 'refit')"
        )
    if stage.against_default:
        print(stage.against_default)
    print(f"submission: {stage.submission} ({stage.n_test} rows), MLflow run {stage.run_id}")


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from ffdi_tune.config import resolve_shipped
    from ffdi_tune.ensemble.final_stage import run_ensemble
    from ffdi_tune.ensemble.recipe import load_recipe
    from ffdi_tune.tracking import Tracker, resolve_tracking

    _check_out(args.out)
    args.recipe = str(resolve_shipped(args.recipe, "ensembles"))
    recipe = load_recipe(args.recipe)
    tracker = Tracker(*resolve_tracking())
    stage = run_ensemble(
        recipe,
        args.experiment or recipe.experiments,
        tracker,
        data_root=args.data,
        out=args.out,
        recipe_name=args.recipe,
        allow_changed_data=args.allow_changed_data,
        refitter=_refitter(tracker, address=getattr(args, "address", None)),
    )
    _print_ensemble(stage)
    if args.register:
        from ffdi_tune.tracking.model import register_ensemble_model

        version = register_ensemble_model(resolve_tracking()[0], stage.run_id, args.register)
        print(f"registered: model {args.register!r} version {version} (runs:/{stage.run_id}/model)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ffdi_tune.data.settings import DataConfig
    from ffdi_tune.ensemble.single_run import predict_run
    from ffdi_tune.errors import ConfigError
    from ffdi_tune.scoring.tta import check_views
    from ffdi_tune.tracking import Tracker, resolve_tracking

    try:
        views = check_views(args.tta.split(","))
    except ValueError as exc:
        raise ConfigError(f"--tta: {exc}") from None
    _check_out(args.out)
    path = predict_run(
        Tracker(*resolve_tracking()), args.run, DataConfig(root=args.data), views, Path(args.out)
    )
    print(f"wrote {path}")
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from ffdi_tune.data.demo import write_demo_dataset

    root = write_demo_dataset(
        args.dir,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        size=args.size,
        seed=args.seed,
        difficulty=args.difficulty,
        unseen_forgery=args.unseen_forgery,
    )
    print(f"wrote {args.n_train} train, {args.n_val} val, {args.n_test} test images to {root}")
    if args.unseen_forgery:
        print(
            f"forgery kind {args.unseen_forgery} is in testset only; test labels in "
            f"{root / 'testset_label.txt'}"
        )
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from ffdi_tune.tracking import replay_spool
    from ffdi_tune.tracking.spool import search_spool

    n = replay_spool(search_spool(args.storage, args.name))
    print(
        f"search {args.name}: "
        + (f"{n} kept tracking write(s) replayed" if n else "nothing to sync")
    )
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from ffdi_tune.config import load_search_config
    from ffdi_tune.tracking import resolve_tracking
    from ffdi_tune.tracking.settings import TrackingConfig

    tracking = load_search_config(args.config).tracking if args.config else TrackingConfig()
    uri, artifacts = resolve_tracking(tracking)
    # the environment's own MLflow (the one ffdi-tune logs with), not whichever is first on PATH
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    # Become the server (no wrapper process left to orphan it): signals reach mlflow directly.
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    """The ``ffdi-tune`` parser; each subcommand's ``func`` runs it."""
    from ffdi_tune import __version__

    parser = argparse.ArgumentParser(
        prog="ffdi-tune",
        description=(
            "Ray Tune + Optuna + ASHA hyperparameter search for image deepfake detection, tracked "
            "in MLflow."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ffdi-tune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_run,
        _add_check,
        _add_ensemble,
        _add_predict,
        _add_demo_data,
        _add_sync,
        _add_ui,
    ):
        add(commands)
    return parser


def _add_check(commands) -> None:
    check = commands.add_parser(
        "check",
        help="every check a run makes before training (config, weights, data, cache, plan), "
        "and what it would do; trains and writes nothing",
    )
    _add_run_flags(check)
    check.set_defaults(func=_cmd_check)


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="run a search described by a YAML file")
    _add_run_flags(run)
    run.set_defaults(func=_cmd_run)


def _add_run_flags(run) -> None:
    """The flags of ``run`` (and of ``check``, which checks what that run would do)."""
    run.add_argument(
        "space",
        help="search-space YAML, e.g. search_spaces/demo.yaml, or a shipped one by name (demo, "
        "efficientnet, convnext)",
    )
    run.add_argument("--data", help="data root (overrides data.root)")
    run.add_argument("--name", help="search name (overrides name)")
    run.add_argument("--num-samples", type=int, help="trials to run (overrides search.num_samples)")
    run.add_argument(
        "--max-concurrent", type=int, help="trials at once (overrides search.max_concurrent)"
    )
    run.add_argument("--epochs", type=int, help="epochs per trial (overrides train.epochs)")
    run.add_argument("--address", help="Ray cluster to join, e.g. auto or ray://host:10001")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the search of this name: finish its trials, then add any that a larger "
        "--num-samples or a new --time-budget asks for",
    )
    run.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="wall-clock budget, e.g. 8h, 90m (overrides search.time_budget); with --resume, "
        "this much more time",
    )
    run.add_argument("--no-ensemble", action="store_true", help="skip the final ensemble stage")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any YAML key, e.g. --set train.lr=3e-4 --set 'space.mix={choice: [none, "
        "mixup]}' (repeatable; the value is read as YAML and checked as in the file)",
    )
    run.add_argument(
        "--no-cache", action="store_true", help="decode images in every trial (data.cache: false)"
    )


def _add_ensemble(commands) -> None:
    ensemble = commands.add_parser(
        "ensemble", help="build a top-k TTA ensemble and submission from finished searches"
    )
    ensemble.add_argument("recipe", help="ensemble recipe YAML, e.g. ensembles/top5.yaml")
    ensemble.add_argument(
        "--experiment", action="append", help="search to pool trials from (repeatable)"
    )
    ensemble.add_argument(
        "--data", help="data root (default: the one recorded on the first search)"
    )
    ensemble.add_argument(
        "--out", help="submission CSV path (default runs/<experiment>/submission.csv)"
    )
    ensemble.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="score valset/testset even if they changed since the search ran",
    )
    ensemble.add_argument(
        "--register",
        metavar="NAME",
        help="register the shipped ensemble (the run's pyfunc model) in the Model Registry as NAME",
    )
    ensemble.set_defaults(func=_cmd_ensemble)


def _add_predict(commands) -> None:
    pred = commands.add_parser(
        "predict", help="score the test images with one trial's best checkpoint"
    )
    pred.add_argument("--run", required=True, help="MLflow run id of the trial")
    pred.add_argument("--data", required=True, help="data root")
    pred.add_argument(
        "--tta", default="identity", help="comma-separated TTA views, e.g. identity,hflip"
    )
    pred.add_argument("--out", required=True, help="output CSV (img_name,y_pred)")
    pred.set_defaults(func=_cmd_predict)


def _add_demo_data(commands) -> None:
    from ffdi_tune.data.settings import DemoSpec

    defaults = DemoSpec()
    demo = commands.add_parser(
        "demo-data", help="write a generated FFDI-layout dataset of JPEG portraits"
    )
    demo.add_argument("dir")
    demo.add_argument("--n-train", type=int, default=defaults.n_train)
    demo.add_argument("--n-val", type=int, default=defaults.n_val)
    demo.add_argument("--n-test", type=int, default=defaults.n_test)
    demo.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    demo.add_argument("--seed", type=int, default=defaults.seed)
    demo.add_argument(
        "--difficulty",
        type=float,
        default=defaults.difficulty,
        help="0 (obvious traces) .. 1 (faint)",
    )
    demo.add_argument(
        "--unseen-forgery",
        metavar="KIND",
        help="keep this forgery kind out of trainset and valset; every test fake carries it",
    )
    demo.set_defaults(func=_cmd_demo_data)


def _add_sync(commands) -> None:
    sync = commands.add_parser(
        "sync", help="replay tracking writes kept while the MLflow server was unreachable"
    )
    sync.add_argument("name", help="search name")
    sync.add_argument(
        "--storage", default="runs", help="the search's search.storage folder (default runs)"
    )
    sync.set_defaults(func=_cmd_sync)


def _add_ui(commands) -> None:
    ui = commands.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the configured store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--config", help="search-space YAML whose tracking section to use")
    ui.set_defaults(func=_cmd_ui)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FfdiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SearchInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            "interrupted; a search continues with the same command plus --resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
