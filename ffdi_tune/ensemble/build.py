"""Build an ensemble from members' per-view log-odds, choosing only on the selection part of valset.

Plain functions, no I/O. The search split valset once (:mod:`ffdi_tune.data.holdout`): on the
*selection* part each member's TTA views are chosen, members ranked, greedy weights fit, and the
combination to ship picked; the *report* part, which nothing chose on, gives the estimate that is
printed.

Combinations built from the top ``top_k`` members (every one is shown, on both parts):

- ``best``: the single member best on the selection part;
- ``mean`` / ``mean-logit``: the mean of the members' probabilities / log-odds;
- ``rank``: the mean of their normalised ranks;
- ``greedy`` / ``greedy-logit``: Caruana forward selection with replacement, on either average.

``combine: auto`` ships the one best on the selection part (ties go to the simpler, earlier one in
that list), so the shipped ensemble is never worse there than its best member; an explicit
``combine`` ships that one (``average`` picks the flavour of mean and greedy).

With predictions on the perturbed copy of valset (``robust_val``), the recipe's ``metric`` may be
``val_robust_auc`` or ``val_worst_auc``; views, ranking, weights and the choice all follow it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ffdi_tune import tracking
from ffdi_tune.ensemble.combine import (
    greedy_select,
    mean_log_odds,
    mean_probability,
    rank_average,
    to_probability,
)
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.scoring.epoch_metrics import higher_is_better, robust_metrics
from ffdi_tune.scoring.metrics import binary_metrics, roc_auc, tpr_at_fpr

__all__ = ["MemberPredictions", "Combination", "EnsembleResult", "COMBINATIONS", "build_ensemble"]

# In the order auto breaks ties in: simpler first.
COMBINATIONS = ("best", "mean", "mean-logit", "rank", "greedy", "greedy-logit")
_COMBINERS = {"prob": mean_probability, "logit": mean_log_odds, "rank": rank_average}


@dataclass
class MemberPredictions:
    """One candidate's log-odds of fake: ``views x images`` for val and test; view 0 is identity.

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


@dataclass(frozen=True)
class Combination:
    """Members and weights (summing to 1), and the scale they are averaged on."""

    name: str  # one of COMBINATIONS
    members: tuple[str, ...]
    weights: tuple[float, ...]
    scale: str  # "prob", "logit" or "rank"

    def score(self, per_member: dict[str, np.ndarray]) -> np.ndarray:
        """The combined score of per-member log-odds (higher = more likely fake)."""
        stacked = np.stack([per_member[m] for m in self.members])
        return _COMBINERS[self.scale](stacked, np.array(self.weights))

    def label(self) -> str:
        n = len(self.members)
        average = {"prob": "probabilities", "logit": "log-odds", "rank": "ranks"}[self.scale]
        if self.name == "best":
            return "best member"
        if self.name == "rank":
            return f"rank average of {n}"
        if self.name.startswith("greedy"):
            return f"greedy: {n} member{'s' if n > 1 else ''}, {average}"
        return f"mean of {n} {average}"


@dataclass
class EnsembleResult:
    chosen: str  # the shipped combination's name
    members: list[str]  # its members (weight > 0), best first
    weights: dict[str, float]
    views: dict[str, list[str]]  # the views each candidate uses
    test_pred: np.ndarray  # probabilities (ranks for ``rank``) of the test images, full precision
    report_pred: np.ndarray  # the shipped score on the report part (for ROC plots)
    report_targets: np.ndarray
    member_report_preds: dict[str, np.ndarray]
    table: pd.DataFrame  # one row per candidate member, then one per combination
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def honest(self) -> bool:
        """Whether a report part exists (``search.holdout.fraction`` > 0)."""
        return len(self.report_targets) > 0


def _objective(metric: str, y: np.ndarray, clean: np.ndarray, robust: np.ndarray | None) -> float:
    """What choosing maximises for ``metric``: the clean AUC, the perturbed one, or the lower of
    both."""
    if metric == "val_robust_auc":
        return roc_auc(y, robust)
    if metric == "val_worst_auc":
        return min(roc_auc(y, clean), roc_auc(y, robust))
    return roc_auc(y, clean)


def _rank_score(metric: str, y: np.ndarray, clean: np.ndarray, robust: np.ndarray | None) -> float:
    if metric in robust_metrics():
        return _objective(metric, y, clean, robust)
    return binary_metrics(y, clean)[metric]


def _auc_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    return roc_auc(y, score) if len(y) else math.nan


def _greedy(
    name: str,
    pool: list[str],
    clean: dict,
    robust: dict,
    sel: np.ndarray,
    y_sel: np.ndarray,
    metric: str,
) -> Combination:
    average = "logit" if name.endswith("-logit") else "prob"
    sets = np.stack([clean[n][sel] for n in pool])
    if metric in robust_metrics():
        perturbed = np.stack([robust[n][sel] for n in pool])
        sets = perturbed if metric == "val_robust_auc" else np.stack([sets, perturbed])
    counts = greedy_select(sets, y_sel, average)
    chosen = [(n, float(k)) for n, k in zip(pool, counts, strict=True) if k > 0]
    total = sum(k for _, k in chosen)
    return Combination(
        name, tuple(n for n, _ in chosen), tuple(k / total for _, k in chosen), average
    )


def _combinations(
    pool: list[str],
    best: str,
    clean: dict,
    robust: dict,
    sel: np.ndarray,
    y_sel: np.ndarray,
    metric: str,
) -> list[Combination]:
    equal = tuple(1.0 / len(pool) for _ in pool)
    return [
        Combination("best", (best,), (1.0,), "logit"),
        Combination("mean", tuple(pool), equal, "prob"),
        Combination("mean-logit", tuple(pool), equal, "logit"),
        Combination("rank", tuple(pool), equal, "rank"),
        _greedy("greedy", pool, clean, robust, sel, y_sel, metric),
        _greedy("greedy-logit", pool, clean, robust, sel, y_sel, metric),
    ]


def _requested(recipe: EnsembleRecipe) -> str | None:
    """The combination an explicit ``combine`` names (None for auto)."""
    if recipe.combine in ("mean", "greedy"):
        return recipe.combine + ("-logit" if recipe.average == "logit" else "")
    return None if recipe.combine == "auto" else recipe.combine


def build_ensemble(
    candidates: list[MemberPredictions],
    targets: np.ndarray,
    recipe: EnsembleRecipe,
    select: np.ndarray,
    report: np.ndarray,
) -> EnsembleResult:
    """Choose views, rank, combine and pick on ``select`` (valset positions); score on ``report``.

    ``report`` may be empty (``search.holdout.fraction: 0``): there is then no honest estimate, and
    the report columns and metrics are NaN / left out.
    """
    if recipe.top_k > len(candidates):
        raise ValueError(f"top_k={recipe.top_k} but only {len(candidates)} candidates")
    has_robust = all(c.val_robust is not None for c in candidates)
    if recipe.metric in robust_metrics() and not has_robust:
        raise ValueError(
            f"metric {recipe.metric} needs every candidate's predictions on the perturbed valset"
        )
    sel, rep = np.asarray(select, dtype=int), np.asarray(report, dtype=int)
    y_sel, y_rep = targets[sel], targets[rep]
    metric = recipe.metric
    views, clean, plain, test, robust, robust_plain = {}, {}, {}, {}, {}, {}
    rows: dict[str, dict] = {}

    def on_sel(scores: np.ndarray | None) -> np.ndarray | None:
        return None if scores is None else scores[sel]

    for c in candidates:
        tta_idx = [c.views.index(v) for v in recipe.tta]
        with_tta, without = c.val[tta_idx].mean(0), c.val[0]  # TTA averages log-odds over views
        r_tta, r_plain = (
            (c.val_robust[tta_idx].mean(0), c.val_robust[0]) if has_robust else (None, None)
        )
        use_tta = not recipe.tta_select or (
            _objective(metric, y_sel, with_tta[sel], on_sel(r_tta))
            >= _objective(metric, y_sel, without[sel], on_sel(r_plain))
        )
        views[c.name] = list(recipe.tta) if use_tta else ["identity"]
        clean[c.name], plain[c.name] = (with_tta if use_tta else without), without
        test[c.name] = c.test[tta_idx].mean(0) if use_tta else c.test[0]
        if has_robust:
            robust[c.name], robust_plain[c.name] = (r_tta if use_tta else r_plain), r_plain
        rows[c.name] = {
            "member": c.name,
            "label": c.label,
            "kind": "member",
            "views": "+".join(views[c.name]),
            "weight": 0.0,
            "shipped": False,
            "rank_score": _rank_score(
                metric, y_sel, clean[c.name][sel], on_sel(robust.get(c.name))
            ),
            "select_objective": _objective(
                metric, y_sel, clean[c.name][sel], on_sel(robust.get(c.name))
            ),
            "select_auc_no_tta": roc_auc(y_sel, without[sel]),
            "select_auc_tta": roc_auc(y_sel, with_tta[sel]),
            "holdout_auc_no_tta": _auc_or_nan(y_rep, without[rep]),
            "holdout_auc_tta": _auc_or_nan(y_rep, with_tta[rep]),
        }
        if has_robust:
            rows[c.name].update(
                select_robust_auc=roc_auc(y_sel, robust[c.name][sel]),
                holdout_robust_auc=_auc_or_nan(y_rep, robust[c.name][rep]),
            )
    ranked = sorted(rows, key=lambda n: rows[n]["rank_score"], reverse=higher_is_better(metric))
    pool = ranked[: recipe.top_k]
    # first of equals: the better-ranked one
    best = max(pool, key=lambda n: rows[n]["select_objective"])

    combos = _combinations(pool, best, clean, robust, sel, y_sel, metric)
    combo_rows = []
    for combo in combos:
        score, score_plain = combo.score(clean), combo.score(plain)
        score_robust = combo.score(robust) if has_robust else None
        row = {
            "member": combo.name,
            "label": combo.label(),
            "kind": "ensemble",
            "views": "per member",
            "weight": math.nan,
            "shipped": False,
            "rank_score": math.nan,
            "select_objective": _objective(
                metric, y_sel, score[sel], None if score_robust is None else score_robust[sel]
            ),
            "select_auc_no_tta": roc_auc(y_sel, score_plain[sel]),
            "select_auc_tta": roc_auc(y_sel, score[sel]),
            "holdout_auc_no_tta": _auc_or_nan(y_rep, score_plain[rep]),
            "holdout_auc_tta": _auc_or_nan(y_rep, score[rep]),
        }
        if has_robust:
            row.update(
                select_robust_auc=roc_auc(y_sel, score_robust[sel]),
                holdout_robust_auc=_auc_or_nan(y_rep, score_robust[rep]),
            )
        combo_rows.append((combo, row, score))
    wanted = _requested(recipe)
    if wanted is None:  # auto: the best on the selection part; max() keeps the first of equals
        shipped, ship_row, ship_score = max(combo_rows, key=lambda t: t[1]["select_objective"])
    else:
        shipped, ship_row, ship_score = next(t for t in combo_rows if t[0].name == wanted)
    ship_row["shipped"] = True
    weights = dict(zip(shipped.members, shipped.weights, strict=True))
    for name, w in weights.items():
        rows[name]["weight"] = w

    table = pd.DataFrame([rows[n] for n in ranked] + [row for _, row, _ in combo_rows])
    metrics = {
        tracking.SELECT_AUC: ship_row["select_auc_tta"],
        tracking.BEST_MEMBER_SELECT_AUC: roc_auc(y_sel, clean[best][sel]),
        tracking.N_MEMBERS: float(len(shipped.members)),
    }
    if len(rep):
        metrics.update(
            {
                tracking.HOLDOUT_AUC: ship_row["holdout_auc_tta"],
                tracking.HOLDOUT_AUC_NO_TTA: ship_row["holdout_auc_no_tta"],
                tracking.HOLDOUT_TPR: tpr_at_fpr(y_rep, ship_score[rep]),
                tracking.BEST_MEMBER_HOLDOUT_AUC: roc_auc(y_rep, clean[best][rep]),
            }
        )
        if has_robust:
            robust = ship_row["holdout_robust_auc"]
            metrics[tracking.HOLDOUT_ROBUST_AUC] = robust
            metrics[tracking.HOLDOUT_WORST_AUC] = min(metrics[tracking.HOLDOUT_AUC], robust)
    test_pred = to_probability(shipped.score(test), shipped.scale)
    return EnsembleResult(
        chosen=shipped.name,
        members=list(shipped.members),
        weights=weights,
        views=views,
        test_pred=test_pred,
        report_pred=ship_score[rep],
        report_targets=y_rep,
        member_report_preds={n: clean[n][rep] for n in shipped.members},
        table=table,
        metrics=metrics,
    )
