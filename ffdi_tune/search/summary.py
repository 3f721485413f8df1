"""A finished search's summary, logged on its parent run: how many trials finished and failed, the
best trial, the search history and what mattered (the figures come from :mod:`ffdi_tune.report`).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pandas as pd

from ffdi_tune import tracking
from ffdi_tune.report import param_importance, plot_param_importance, plot_search_history
from ffdi_tune.scoring.epoch_metrics import best_value
from ffdi_tune.search.trials_table import TrialRow
from ffdi_tune.tracking import Tracker

__all__ = ["summarise_search", "search_history"]


def search_history(
    tracker: Tracker, experiment_id: str, parent_id: str, finished: list[TrialRow], metric: str
) -> pd.DataFrame:
    """One row per finished trial with a run: ``start_time`` and ``end_time`` (s, from the trial's
    MLflow run), its best ``metric`` and its params."""
    times = {
        t.trial_id: (t.start_s, t.end_s or 0.0) for t in tracker.trials_of(experiment_id, parent_id)
    }
    return pd.DataFrame(
        [
            {
                "start_time": times[r.trial_id][0],
                "end_time": times[r.trial_id][1],
                metric: r.best,
                **r.params,
            }
            for r in finished
            if r.trial_id in times
        ]
    )


def summarise_search(
    tracker: Tracker,
    experiment_id: str,
    parent_id: str,
    rows: list[TrialRow],
    metric: str,
    trials_csv: Path,
    searched: list[str],
) -> None:
    """Log a search's totals, best trial, history and parameter importance on its parent run.

    ``rows`` are the ranked trials, ``trials_csv`` their table (logged as it is) and ``searched``
    the parameters the search space varies (their importance is plotted when it can be told).
    """
    finished = [r for r in rows if r.status != "FAILED" and not math.isnan(r.best)]
    tracker.log_metrics(
        parent_id, {"trials_finished": len(finished), "trials_failed": len(rows) - len(finished)}, 0
    )
    tracker.log_artifact(parent_id, trials_csv)
    if not finished:
        return
    best = next(r for r in finished if r.best == best_value(metric, [r.best for r in finished]))
    tracker.log_metrics(parent_id, {f"best_{metric}": best.best}, 0)
    tracker.set_tags(
        parent_id, {tracking.BEST_TRIAL_ID: best.trial_id, tracking.BEST_RUN_ID: best.run_id}
    )
    history = search_history(tracker, experiment_id, parent_id, finished, metric)
    with tempfile.TemporaryDirectory(prefix="ffdi-plots-") as tmp:
        tracker.log_artifact(
            parent_id, plot_search_history(history, metric, Path(tmp) / "search_history.png")
        )
        importance = param_importance(history, searched, metric)
        if importance:
            tracker.log_artifact(
                parent_id, plot_param_importance(importance, Path(tmp) / "param_importance.png")
            )
