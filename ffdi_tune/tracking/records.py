"""Typed records of what the package reads back from MLflow runs (trials and valset splits), and
what it logs of its datasets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ffdi_tune.tracking.schema import (
    BUDGET_CUT,
    DEFAULT_RECIPE,
    EPOCHS_RUN,
    HOLDOUT_FRACTION,
    HOLDOUT_REPORT_HASH,
    HOLDOUT_SEED,
    STOPPED_EARLY,
    TRIAL_ID,
)

__all__ = ["TrialRecord", "holdout_tags", "holdout_from_tags", "dataset_input"]


@dataclass(frozen=True)
class TrialRecord:
    """What the rest of the package reads of a trial's MLflow run."""

    run_id: str
    run_name: str
    trial_id: str
    status: str  # MLflow's: FINISHED, FAILED, KILLED, RUNNING
    epochs_run: int
    stopped_early: bool  # by ASHA
    budget_cut: bool  # by the time budget
    params: dict[str, str]
    metrics: dict[str, float]  # the last value of each
    start_s: float  # seconds since the epoch
    end_s: float | None
    default_recipe: bool = False  # the search's first trial: its default recipe

    @classmethod
    def of(cls, run) -> TrialRecord:
        t = run.data.tags
        return cls(
            run.info.run_id,
            run.info.run_name or "",
            t.get(TRIAL_ID, ""),
            run.info.status,
            int(t.get(EPOCHS_RUN, "0")),
            t.get(STOPPED_EARLY) == "true",
            t.get(BUDGET_CUT) == "true",
            dict(run.data.params),
            dict(run.data.metrics),
            run.info.start_time / 1000,
            run.info.end_time / 1000 if run.info.end_time else None,
            t.get(DEFAULT_RECIPE) == "True",
        )


def holdout_tags(holdout) -> dict[str, str]:
    """The tags that identify a valset split (:class:`~ffdi_tune.data.holdout.Holdout`) on a run."""
    return {
        HOLDOUT_FRACTION: repr(float(holdout.fraction)),  # exact: the split is made again from it
        HOLDOUT_SEED: str(holdout.seed),
        HOLDOUT_REPORT_HASH: holdout.report_hash,
    }


def holdout_from_tags(tags: dict[str, str]) -> dict | None:
    """``{"fraction", "seed", "report_hash"}`` of the split a run's tags record; None when they
    record none (a search made before splits were recorded)."""
    if HOLDOUT_REPORT_HASH not in tags:
        return None
    return {
        "fraction": float(tags.get(HOLDOUT_FRACTION, 0)),
        "seed": int(tags.get(HOLDOUT_SEED, 0)),
        "report_hash": tags[HOLDOUT_REPORT_HASH],
    }


def dataset_input(split, name: str, context: str, source: str) -> dict:
    """A split (:class:`~ffdi_tune.data.layout.Split`) as an MLflow dataset input: its name, a
    digest of its image names and labels (any added, removed, renamed or relabelled image changes
    it), where it lives and how many images it has; ``context`` is MLflow's (``training``,
    ``validation``)."""
    targets = [None] * len(split) if split.targets is None else [int(t) for t in split.targets]
    rows = sorted(zip(split.names, targets, strict=True), key=lambda row: row[0])
    digest = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:20]
    return {"name": name, "digest": digest, "context": context, "source": source, "rows": len(rows)}
