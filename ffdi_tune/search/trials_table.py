"""The ranked trials table: printed at the end of a search and written to ``trials.csv``.

One row per trial, best first, with its status: FINISHED (ran all its epochs), STOPPED (by ASHA),
CUT (ended by the time budget before its last epoch), FAILED, or INTERRUPTED (pending or running
when the driver stopped; a ``--resume`` finishes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ffdi_tune.files import write_atomic
from ffdi_tune.scoring.epoch_metrics import higher_is_better

__all__ = ["TrialRow", "trials_frame", "write_trials_csv", "format_table"]


@dataclass
class TrialRow:
    """One trial of the search, as the table shows it."""

    trial_id: str
    run_id: str
    status: str  # FINISHED, STOPPED (by ASHA), CUT (by the time budget), FAILED or INTERRUPTED
    best: float  # best value of the search metric over the trial's epochs (NaN if none)
    epochs_run: int
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""
    error: str = ""  # a failed trial's error, its last line


def trials_frame(rows: list[TrialRow], metric: str) -> pd.DataFrame:
    """One row per trial, best first (failed and metric-less trials last)."""
    records = []
    for r in rows:
        rec = {
            "trial_id": r.trial_id,
            "mlflow_run_id": r.run_id,
            f"best_{metric}": r.best,
            "epochs_run": r.epochs_run,
            "status": r.status,
        }
        rec.update(r.params)
        rec["checkpoint"] = r.checkpoint
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return df
    key = f"best_{metric}"
    df = df.sort_values(
        key, ascending=not higher_is_better(metric), na_position="last", kind="stable"
    )
    df.insert(0, "rank", range(1, len(df) + 1))
    return df.reset_index(drop=True)


def write_trials_csv(rows: list[TrialRow], path: Path, metric: str) -> Path:
    return write_atomic(path, trials_frame(rows, metric).to_csv(index=False))


def format_table(rows: list[TrialRow], metric: str, max_params: int = 6) -> str:
    """A compact text table of the ranked trials (key params only)."""
    df = trials_frame(rows, metric)
    if df.empty:
        return "(no trials)"
    keep = ["rank", "trial_id", "mlflow_run_id", f"best_{metric}", "epochs_run", "status"]
    params = [c for c in df.columns if c not in keep and c != "checkpoint"][:max_params]
    view = df[keep + params].copy()
    view[f"best_{metric}"] = view[f"best_{metric}"].map(
        lambda v: "-" if math.isnan(v) else f"{v:.4f}"
    )
    for c in params:
        view[c] = view[c].map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)
    return view.to_string(index=False)
