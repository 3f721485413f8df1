"""Build an ensemble from members' per-view predictions, with an honest estimate.

Plain functions, no I/O. Valset is split (stratified, seeded) into a *selection* half and a *report*
half: TTA views are chosen, members ranked and greedy weights fit on the selection half only; the
report half gives the AUC that is printed. Every member and the ensemble are scored without TTA,
with TTA, and on both halves, so users see what each step is worth and how optimistic the
selection half is.

With predictions on the perturbed copy of valset (``robust_val``), the recipe's ``metric`` may be
``val_robust_auc`` (choose on the perturbed images) or ``val_worst_auc`` (on the lower of the clean
and perturbed AUC); views, ranking and greedy weights then all follow it, on the selection half.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ffdi_tune.combine import COMBINERS, greedy_select, holdout_split
from ffdi_tune.config import METRIC_MODES, ROBUST_METRICS
from ffdi_tune.metrics import binary_metrics
from ffdi_tune.recipe import EnsembleRecipe

__all__ = ["MemberPredictions", "EnsembleResult", "build_ensemble"]


@dataclass
class MemberPredictions:
    """One candidate's probabilities: ``views x images`` for val and test; view 0 is identity.

    ``val_robust`` holds the same views on the perturbed copy of valset, when it was scored.
    """

    name: str
    label: str
    views: list[str]
    val: np.ndarray
    test: np.ndarray
    val_robust: np.ndarray | None = None

    def __post_init__(self):
        if self.views[0] != "identity":
            raise ValueError(f"view 0 must be identity, got {self.views}")


@dataclass
class EnsembleResult:
    members: list[str]  # chosen members (weight > 0), best first
    weights: dict[str, float]
    views: dict[str, list[str]]  # the views each member uses
    test_pred: np.ndarray
    report_pred: np.ndarray  # ensemble on the report half (for ROC plots)
    report_targets: np.ndarray
    member_report_preds: dict[str, np.ndarray]
    table: pd.DataFrame  # one row per candidate plus the ensemble
    metrics: dict[str, float] = field(default_factory=dict)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return binary_metrics(y, p)["val_auc"]


def _selection_auc(metric: str, y: np.ndarray, clean: np.ndarray, robust: np.ndarray | None) -> float:
    """The AUC that choosing optimises for ``metric``: clean, perturbed, or the lower of the two."""
    if metric == "val_robust_auc":
        return _auc(y, robust)
    if metric == "val_worst_auc":
        return min(_auc(y, clean), _auc(y, robust))
    return _auc(y, clean)


def _rank_score(metric: str, y: np.ndarray, clean: np.ndarray, robust: np.ndarray | None) -> float:
    if metric in ROBUST_METRICS:
        return _selection_auc(metric, y, clean, robust)
    return binary_metrics(y, clean)[metric]


def build_ensemble(candidates: list[MemberPredictions], targets: np.ndarray, recipe: EnsembleRecipe) -> EnsembleResult:
    """Choose views, rank, select and combine on the selection half; report on the other half."""
    if recipe.top_k > len(candidates):
        raise ValueError(f"top_k={recipe.top_k} but only {len(candidates)} candidates")
    has_robust = all(c.val_robust is not None for c in candidates)
    if recipe.metric in ROBUST_METRICS and not has_robust:
        raise ValueError(f"metric {recipe.metric} needs every candidate's predictions on the perturbed valset")
    sel, rep = holdout_split(targets, recipe.holdout_fraction, recipe.seed)
    y_sel, y_rep = targets[sel], targets[rep]
    rows, chosen_val, chosen_test, plain_val, chosen_views = {}, {}, {}, {}, {}
    chosen_robust: dict[str, np.ndarray] = {}

    def on_sel(p: np.ndarray | None) -> np.ndarray | None:
        return None if p is None else p[sel]

    for c in candidates:
        tta_idx = [c.views.index(v) for v in recipe.tta]
        plain, tta = c.val[0], c.val[tta_idx].mean(0)
        r_plain, r_tta = (c.val_robust[0], c.val_robust[tta_idx].mean(0)) if has_robust else (None, None)
        use_tta = not recipe.tta_select or (_selection_auc(recipe.metric, y_sel, tta[sel], on_sel(r_tta))
                                            >= _selection_auc(recipe.metric, y_sel, plain[sel], on_sel(r_plain)))
        chosen_views[c.name] = list(recipe.tta) if use_tta else ["identity"]
        chosen_val[c.name] = tta if use_tta else plain
        chosen_test[c.name] = c.test[tta_idx].mean(0) if use_tta else c.test[0]
        plain_val[c.name] = plain
        if has_robust:
            chosen_robust[c.name] = r_tta if use_tta else r_plain
        score = _rank_score(recipe.metric, y_sel, chosen_val[c.name][sel], on_sel(chosen_robust.get(c.name)))
        rows[c.name] = {
            "member": c.name, "label": c.label, "rank_score": score,
            "select_auc_no_tta": _auc(y_sel, plain[sel]), "select_auc_tta": _auc(y_sel, tta[sel]),
            "holdout_auc_no_tta": _auc(y_rep, plain[rep]), "holdout_auc_tta": _auc(y_rep, tta[rep]),
            "views": "+".join(chosen_views[c.name]), "weight": 0.0,
        }
        if has_robust:
            rows[c.name].update(select_robust_auc=_auc(y_sel, chosen_robust[c.name][sel]),
                                holdout_robust_auc=_auc(y_rep, chosen_robust[c.name][rep]))
    higher = METRIC_MODES[recipe.metric] == "max"
    ranked = sorted(rows, key=lambda n: rows[n]["rank_score"], reverse=higher)
    pool = ranked[: recipe.top_k]
    if recipe.combine == "greedy":
        clean = np.stack([chosen_val[n][sel] for n in pool])
        if recipe.metric in ROBUST_METRICS:
            robust = np.stack([chosen_robust[n][sel] for n in pool])
            sets = robust if recipe.metric == "val_robust_auc" else np.stack([clean, robust])
        else:
            sets = clean
        counts = greedy_select(sets, y_sel)
        weights = {n: float(k) for n, k in zip(pool, counts) if k > 0}
        combine = COMBINERS["mean"]
    else:
        weights = {n: 1.0 for n in pool}
        combine = COMBINERS[recipe.combine]
    members = [n for n in pool if n in weights]
    w = np.array([weights[n] for n in members])
    total = w.sum()
    for n in members:
        rows[n]["weight"] = weights[n] / total

    ens_val = combine(np.stack([chosen_val[n] for n in members]), w)
    ens_plain = combine(np.stack([plain_val[n] for n in members]), w)
    test_pred = np.clip(combine(np.stack([chosen_test[n] for n in members]), w), 0.0, 1.0)
    ens_row = {
        "member": "ensemble", "label": f"{recipe.combine} of {len(members)}", "rank_score": np.nan,
        "select_auc_no_tta": _auc(y_sel, ens_plain[sel]), "select_auc_tta": _auc(y_sel, ens_val[sel]),
        "holdout_auc_no_tta": _auc(y_rep, ens_plain[rep]), "holdout_auc_tta": _auc(y_rep, ens_val[rep]),
        "views": "per member", "weight": 1.0,
    }
    ens_robust = combine(np.stack([chosen_robust[n] for n in members]), w) if has_robust else None
    if ens_robust is not None:
        ens_row.update(select_robust_auc=_auc(y_sel, ens_robust[sel]), holdout_robust_auc=_auc(y_rep, ens_robust[rep]))
    table = pd.DataFrame([rows[n] for n in ranked] + [ens_row])
    report = binary_metrics(y_rep, ens_val[rep], prefix="holdout_")
    best_member = max(members, key=lambda n: rows[n]["rank_score"] if higher else -rows[n]["rank_score"])
    metrics = {
        "select_auc": ens_row["select_auc_tta"], "holdout_auc": report["holdout_auc"],
        "holdout_tpr_at_fpr_0.001": report["holdout_tpr_at_fpr_0.001"],
        "holdout_auc_no_tta": ens_row["holdout_auc_no_tta"],
        "best_member_holdout_auc": _auc(y_rep, chosen_val[best_member][rep]),
        "n_members": float(len(members)),
    }
    if ens_robust is not None:
        metrics["holdout_robust_auc"] = ens_row["holdout_robust_auc"]
        metrics["holdout_worst_auc"] = min(metrics["holdout_auc"], metrics["holdout_robust_auc"])
    return EnsembleResult(
        members=members, weights={n: weights[n] / total for n in members}, views=chosen_views,
        test_pred=test_pred, report_pred=ens_val[rep], report_targets=y_rep,
        member_report_preds={n: chosen_val[n][rep] for n in members}, table=table, metrics=metrics,
    )
