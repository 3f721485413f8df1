"""The final stage's refit: the chosen ensemble, its models trained again on more labelled images.

Everything is chosen first, on the selection part, with the search's models (members, views,
combination, weights: :func:`~ffdi_tune.ensemble.build.build_ensemble`). With ``refit: {seeds:
N}`` each shipped member's configuration is then trained again N times (new seeds; its schedule
over its own epochs, stopped at its best epoch), on trainset plus the selection part of valset, by
the caller's
:data:`Refitter` (the search's Ray Tune trials: :mod:`ffdi_tune.search.refit_trials`). The shipped
ensemble is the same combination with each member's refits in its place, sharing its weight
equally, on the combination's scale. The report part, which neither chose nor trained anything,
scores the refit ensemble, so the estimate stays honest; the selection part cannot (the refits
trained on it), so the selection-part figures stay those of the choice. A member whose refits all
failed or were cut keeps the search's model.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ffdi_tune import tracking
from ffdi_tune.ensemble.build import EnsembleResult, MemberPredictions
from ffdi_tune.ensemble.methods import Combination
from ffdi_tune.scoring.combine import to_probability
from ffdi_tune.scoring.metrics import bootstrap_auc_interval, roc_auc, tpr_at_fpr
from ffdi_tune.tracking import Tracker
from ffdi_tune.training.trial import BEST_FILE, RefitJob

__all__ = ["Refitter", "refit_jobs", "refit_result", "SEED_STRIDE"]

# (jobs, the valset images they add to trainset, the search's recorded config, the data root)
# -> member run id -> the run ids of its refits that trained to their end
Refitter = Callable[[list[RefitJob], tuple[str, ...], dict, str], dict[str, list[str]]]
SEED_STRIDE = 1009  # refit k of a trial seeded s is seeded s + k * SEED_STRIDE


def refit_jobs(tracker: Tracker, members: list[str], seeds: int) -> list[RefitJob]:
    """``seeds`` jobs per member run: its settings as its ``best.pt`` holds them (its schedule over
    its own epochs), stopping at its best epoch, with the kind of weights it kept, each with a new
    seed."""
    jobs = []
    with tempfile.TemporaryDirectory(prefix="ffdi-refit-") as tmp:
        for member in members:
            path = tracker.download(member, f"checkpoint/{BEST_FILE}", Path(tmp) / member)
            best = torch.load(path, map_location="cpu", weights_only=True)
            base = best["settings"].get("seed") or 0
            kind, epochs = best.get("weights_kind", "raw"), int(best["epoch"])
            for k in range(1, seeds + 1):
                settings = {**best["settings"], "seed": base + k * SEED_STRIDE}
                jobs.append(RefitJob(member, settings, kind, epochs))
    return jobs


def _with_views(p: MemberPredictions, views: list[str], split: str) -> np.ndarray:
    """``p``'s log-odds on ``split`` averaged over ``views`` (as the member's were)."""
    scores = getattr(p, split)
    return scores[[p.views.index(v) for v in views]].mean(0)


def _shipped_models(
    result: EnsembleResult, refits: dict[str, list[str]], scored: dict[str, MemberPredictions]
) -> tuple[list[str], list[float], dict[str, list[str]]]:
    """The models that ship: each member's refits sharing its weight (or the member itself,
    without a finished refit), with the member's views."""
    names, weights, views = [], [], {}
    for member in result.members:
        runs = [r for r in refits.get(member, []) if r in scored] or [member]
        for run in runs:
            names.append(run)
            weights.append(result.weights[member] / len(runs))
            views[run] = result.views[member]
    return names, weights, views


def refit_result(
    result: EnsembleResult,
    refits: dict[str, list[str]],
    scored: dict[str, MemberPredictions],
    targets: np.ndarray,
    report: np.ndarray,
) -> EnsembleResult:
    """``result`` with its members replaced by their refits (``scored``: the predictions of the
    refits and of the search's members), scored again on the report part; the table gains a
    shipped ``refit`` row and the metrics the estimate before it."""
    names, weights, views = _shipped_models(result, refits, scored)
    combo = Combination(result.chosen, tuple(names), tuple(weights), result.scale)
    val = {n: _with_views(scored[n], views[n], "val") for n in names}
    identity = {n: scored[n].val[0] for n in names}
    test = {n: _with_views(scored[n], views[n], "test") for n in names}
    score, score_identity = combo.score(val), combo.score(identity)
    y = targets[report]
    metrics = dict(result.metrics)
    for key in (tracking.HOLDOUT_ROBUST_AUC, tracking.HOLDOUT_WORST_AUC):
        metrics.pop(key, None)  # the refits are not scored on the perturbed copy
    if len(report):
        low, high = bootstrap_auc_interval(y, score[report])
        metrics |= {
            tracking.HOLDOUT_AUC_BEFORE_REFIT: result.metrics[tracking.HOLDOUT_AUC],
            tracking.HOLDOUT_AUC: roc_auc(y, score[report]),
            tracking.HOLDOUT_AUC_NO_TTA: roc_auc(y, score_identity[report]),
            tracking.HOLDOUT_AUC_LOW: low,
            tracking.HOLDOUT_AUC_HIGH: high,
            tracking.HOLDOUT_TPR: tpr_at_fpr(y, score[report]),
        }
    table = result.table.assign(shipped=False)
    row = {
        "member": "refit",
        "label": f"{result.chosen} of {len(names)} model(s): each member's refits in its place",
        "kind": "ensemble",
        "views": "per member",
        "weight": math.nan,
        "shipped": True,
        "select_auc_no_tta": math.nan,  # the refits trained on the selection part
        "select_auc_tta": math.nan,
        "holdout_auc_no_tta": metrics.get(tracking.HOLDOUT_AUC_NO_TTA, math.nan),
        "holdout_auc_tta": metrics.get(tracking.HOLDOUT_AUC, math.nan),
    }
    return replace(
        result,
        members=names,
        weights=dict(zip(names, weights, strict=True)),
        views={**result.views, **views},
        test_pred=to_probability(combo.score(test), combo.scale),
        report_pred=score[report],
        member_report_preds={n: val[n][report] for n in names},
        member_test_preds=test,
        table=pd.concat([table, pd.DataFrame([row])], ignore_index=True),
        metrics=metrics,
    )
