"""``ffdi-tune check``: every check a run makes before it trains, and what it would do, without
training or writing a search.

The same steps as the start of :func:`~ffdi_tune.search.runner.run_search`, in its order: the
name (taken or free), the pretrained weights of every backbone, the dataset in one pass, the valset
split, the decode cache's size against its disk, and with a time budget the plan (probes
included). Nothing is written under ``runs/`` and no MLflow run is made; the cache folder may keep
the image verdicts and probe timings, which the run then reuses. A demo dataset that does not
exist yet is not generated: the check says the run would generate it.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune

from ffdi_tune.config import SearchConfig
from ffdi_tune.data.holdout import split_valset
from ffdi_tune.data.layout import cache_dir_of, read_split
from ffdi_tune.durations import format_duration
from ffdi_tune.search import cache_plan
from ffdi_tune.search.plan import plan_inputs, plan_search
from ffdi_tune.search.setup import cache_entries, prepare_data

__all__ = ["preflight"]


def preflight(
    cfg: SearchConfig,
    exp_path: str,
    final_stage: tuple[int, int | None],
    echo=print,
) -> None:
    """Check ``cfg`` as a run would and print what it would do; the project's one-line errors
    for whatever a run would refuse."""
    taken = tune.Tuner.can_restore(exp_path)
    echo(
        f"name: {cfg.name!r} "
        + ("exists: the run needs --resume (or --name NEW)" if taken else "is free")
    )
    root = Path(cfg.data.root).expanduser()
    if cfg.data.demo is not None and not root.exists():
        echo(f"data: {root} does not exist; the run would generate the demo dataset there first")
        return
    check = prepare_data(cfg, echo)
    val = read_split(check.data, "val")
    holdout = split_valset(val, cfg.search.holdout.fraction, cfg.search.holdout.seed)
    echo(
        f"holdout: {len(holdout.select_names)} valset images would choose, "
        f"{len(holdout.report_names)} be kept for the estimate"
    )
    cache_dir = cache_dir_of(check.data)
    if cache_dir is not None:
        entries = cache_entries(cfg, check.data, holdout)
        cache_plan.check_fits(entries, cache_dir, check.data.cache_max_gb)
        gigabytes = sum(e.bytes for e in entries) / 1e9
        echo(f"cache: {gigabytes:.2f} GB of decoded images in {cache_dir}, which has room")
    if cfg.search.time_budget and not taken:
        echo(plan_search(plan_inputs(cfg, check, 0.0, *final_stage, echo)).describe())
    elif cfg.search.time_budget is None:
        echo(
            f"search: {cfg.search.num_samples} trials, {cfg.search.max_concurrent} at a time, "
            f"{cfg.train.epochs} epochs each at most, no time budget"
        )
    else:
        echo(f"time budget: {format_duration(cfg.search.time_budget)} (a resume keeps its plan)")
