"""Build an ensemble from members' per-view log-odds, choosing only on the selection part of valset.

Plain functions, no I/O. The search split valset once (:mod:`ffdi_tune.data.holdout`): on the
*selection* part each member's TTA views are chosen, members ranked, every registered combination
of the top ``top_k`` fit (:mod:`ffdi_tune.ensemble.methods`) and the one to ship picked; the
*report* part, which nothing chose on, gives the estimate that is printed. Every combination is
shown, on both parts.

``combine: auto`` compares the combinations by cross-fitting: ranking, pool and weights fit on one
half of the selection part and scored on the other, then the other way round (a greedy weight fit
and its score on the same images would favour greedy). Of those at least as good as the best member
on the whole selection part (``best`` always is, so the shipped ensemble is never worse there than
its best member), it ships the best cross-fitted one (ties go to the one registered first, the
simpler), fit on the whole selection part. The members' TTA views and a weight soup's ingredients
were chosen on the whole selection part before. An explicit ``combine`` ships that one
(``average`` picks the flavour of mean and greedy).

With predictions on the perturbed copy of valset (``robust_val``), the recipe's ``metric`` may be
``val_robust_auc`` or ``val_worst_auc``; views, ranking, weights and the choice all follow it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

import numpy as np
import pandas as pd

from ffdi_tune import tracking
from ffdi_tune.ensemble.methods import (
    Combination,
    Pool,
    build_combinations,
    requested_combination,
)
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.scoring.combine import to_probability
from ffdi_tune.scoring.epoch_metrics import higher_is_better, robust_metrics
from ffdi_tune.scoring.metrics import binary_metrics, bootstrap_auc_interval, roc_auc, tpr_at_fpr

__all__ = ["MemberPredictions", "EnsembleResult", "build_ensemble"]


@dataclass
class MemberPredictions:
    """One candidate's log-odds of fake: ``views x images`` for val and test; view 0 is identity.

    ``val_robust`` holds the same views on the perturbed copy of valset, when it was scored.
    ``soup``: a weight soup of members (:mod:`ffdi_tune.ensemble.soup`): shown and offered to the
    ``soup`` combination, never ranked among the members.
    """

    name: str
    label: str
    views: list[str]
    val: np.ndarray
    test: np.ndarray
    val_robust: np.ndarray | None = None
    soup: bool = False

    def __post_init__(self):
        if self.views[0] != "identity":
            raise ValueError(f"view 0 must be identity, got {self.views}")


@dataclass
class EnsembleResult:
    """The shipped combination, its submission scores and the table and metrics that judge it."""

    chosen: str  # the shipped combination's name
    scale: str  # what its weights average: "prob", "logit" or "rank"
    members: list[str]  # its members (weight > 0), best first
    weights: dict[str, float]
    views: dict[str, list[str]]  # the views each candidate uses
    # the test images' y_pred, full precision: probabilities (normalised ranks for rank)
    test_pred: np.ndarray
    report_pred: np.ndarray  # the shipped score on the report part, on its scale (for ROC plots)
    report_targets: np.ndarray
    member_report_preds: dict[str, np.ndarray]  # each shipped member's log-odds there
    table: pd.DataFrame  # one row per candidate member, then one per combination
    metrics: dict[str, float] = field(default_factory=dict)
    # each shipped member's log-odds on testset, with its views (a rank model's references)
    member_test_preds: dict[str, np.ndarray] = field(default_factory=dict)

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


def _auc_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    return roc_auc(y, score) if len(y) else math.nan


@dataclass(frozen=True)
class _Parts:
    """The valset positions of the selection part and of the report part, and their labels."""

    select: np.ndarray
    report: np.ndarray
    y_select: np.ndarray
    y_report: np.ndarray

    @classmethod
    def of(cls, targets: np.ndarray, select: np.ndarray, report: np.ndarray) -> _Parts:
        select, report = np.asarray(select, dtype=int), np.asarray(report, dtype=int)
        return cls(select, report, targets[select], targets[report])

    def objective(self, metric: str, val: np.ndarray, perturbed: np.ndarray | None) -> float:
        """:func:`_objective` on the selection part of valset-wide scores."""
        on_select = None if perturbed is None else perturbed[self.select]
        return _objective(metric, self.y_select, val[self.select], on_select)

    def rank_score(self, metric: str, val: np.ndarray, perturbed: np.ndarray | None) -> float:
        """What ranks the candidates: ``metric`` itself on the selection part."""
        if metric in robust_metrics():
            return self.objective(metric, val, perturbed)
        return binary_metrics(self.y_select, val[self.select])[metric]

    def auc_columns(
        self, no_tta: np.ndarray, tta: np.ndarray, perturbed: np.ndarray | None
    ) -> dict[str, float]:
        """The table's AUC columns of valset-wide scores (the report ones NaN without a report
        part; the perturbed ones only when it was scored)."""
        sel, rep, y_sel, y_rep = self.select, self.report, self.y_select, self.y_report
        columns = {
            "select_auc_no_tta": roc_auc(y_sel, no_tta[sel]),
            "select_auc_tta": roc_auc(y_sel, tta[sel]),
            "holdout_auc_no_tta": _auc_or_nan(y_rep, no_tta[rep]),
            "holdout_auc_tta": _auc_or_nan(y_rep, tta[rep]),
        }
        if perturbed is not None:
            columns.update(
                select_robust_auc=roc_auc(y_sel, perturbed[sel]),
                holdout_robust_auc=_auc_or_nan(y_rep, perturbed[rep]),
            )
        return columns


@dataclass(frozen=True)
class _ViewsChosen:
    """One candidate's log-odds once its views are chosen; the valset ones cover all of valset."""

    views: list[str]
    val: np.ndarray  # with the chosen views
    val_identity: np.ndarray  # identity view only
    val_all_views: np.ndarray  # the mean over every view of the recipe's tta
    test: np.ndarray  # with the chosen views
    val_perturbed: np.ndarray | None  # on the perturbed copy of valset, chosen views


def _choose_views(
    c: MemberPredictions, recipe: EnsembleRecipe, parts: _Parts, perturbed: bool
) -> _ViewsChosen:
    """Keep the recipe's TTA views where they do not lower the objective on the selection part
    (every time without ``tta_select``), else identity alone."""
    tta_idx = [c.views.index(v) for v in recipe.tta]
    all_views, identity = c.val[tta_idx].mean(0), c.val[0]  # TTA averages log-odds over views
    p_all, p_identity = (
        (c.val_robust[tta_idx].mean(0), c.val_robust[0]) if perturbed else (None, None)
    )
    use_tta = not recipe.tta_select or (
        parts.objective(recipe.metric, all_views, p_all)
        >= parts.objective(recipe.metric, identity, p_identity)
    )
    return _ViewsChosen(
        views=list(recipe.tta) if use_tta else ["identity"],
        val=all_views if use_tta else identity,
        val_identity=identity,
        val_all_views=all_views,
        test=c.test[tta_idx].mean(0) if use_tta else c.test[0],
        val_perturbed=p_all if use_tta else p_identity,
    )


def _each(chosen: Mapping[str, _ViewsChosen], scores: str) -> dict[str, np.ndarray]:
    """Candidate -> its ``scores`` (a field of :class:`_ViewsChosen`)."""
    get = attrgetter(scores)
    return {name: get(c) for name, c in chosen.items()}


def _member_row(c: MemberPredictions, m: _ViewsChosen, metric: str, parts: _Parts) -> dict:
    return {
        "member": c.name,
        "label": c.label,
        "kind": "soup" if c.soup else "member",
        "views": "+".join(m.views),
        "weight": 0.0,
        "shipped": False,
        "rank_score": parts.rank_score(metric, m.val, m.val_perturbed),
        "select_objective": parts.objective(metric, m.val, m.val_perturbed),
        **parts.auc_columns(m.val_identity, m.val_all_views, m.val_perturbed),
    }


def _rank(rows: dict[str, dict], metric: str, top_k: int) -> tuple[list[str], list[str], str]:
    """(every candidate of ``rows`` ranked by rank_score, the top ``top_k``, the one of them best
    by the objective; max() keeps the first of equals, the better-ranked one)."""
    ranked = sorted(rows, key=lambda n: rows[n]["rank_score"], reverse=higher_is_better(metric))
    pool = ranked[:top_k]
    best = max(pool, key=lambda n: rows[n]["select_objective"])
    return ranked, pool, best


class _Shown(NamedTuple):
    """A combination, its table row, and its score on all of valset with the chosen views."""

    combination: Combination
    row: dict
    val_score: np.ndarray


def _combination_row(
    combo: Combination,
    chosen: Mapping[str, _ViewsChosen],
    metric: str,
    parts: _Parts,
    perturbed: bool,
) -> _Shown:
    score = combo.score(_each(chosen, "val"))
    score_identity = combo.score(_each(chosen, "val_identity"))
    score_perturbed = combo.score(_each(chosen, "val_perturbed")) if perturbed else None
    row = {
        "member": combo.name,
        "label": combo.label(),
        "kind": "ensemble",
        "views": "per member",
        "weight": math.nan,
        "shipped": False,
        "rank_score": math.nan,
        "select_objective": parts.objective(metric, score, score_perturbed),
        **parts.auc_columns(score_identity, score, score_perturbed),
    }
    return _Shown(combo, row, score)


def _folds(parts: _Parts) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Two stratified, seeded halves of the selection part (positions into it), each used once to
    fit and once to score; None when a class has fewer than two images there."""
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(parts.y_select.astype(int), minlength=2).min() < 2:
        return None
    splitter = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    return list(splitter.split(np.zeros(len(parts.y_select)), parts.y_select))


def _crossfit(
    rows: dict[str, dict],
    chosen: Mapping[str, _ViewsChosen],
    soups: list[str],
    recipe: EnsembleRecipe,
    parts: _Parts,
    perturbed: bool,
) -> dict[str, float]:
    """Combination name -> its objective cross-fitted on the selection part: members ranked, the
    pool taken and every combination fit on one half, scored on the other, and the other way
    round; the mean of the two. Empty when the part is too small to halve."""
    folds = _folds(parts)
    if folds is None:
        return {}
    val, metric = _each(chosen, "val"), recipe.metric
    val_perturbed = _each(chosen, "val_perturbed") if perturbed else {}
    totals: dict[str, float] = {}
    for fit, score in folds:
        half = _Parts(parts.select[fit], parts.report[:0], parts.y_select[fit], parts.y_report[:0])
        on_score = _Parts(
            parts.select[score], parts.report[:0], parts.y_select[score], parts.y_report[:0]
        )
        ranks = {n: {**rows[n], **_half_scores(half, metric, chosen[n])} for n in rows}
        _, pool, best = _rank(
            {n: r for n, r in ranks.items() if n not in soups}, metric, recipe.top_k
        )
        ordered_soups = tuple(sorted(soups, key=lambda n: -ranks[n]["select_objective"]))
        fitted = Pool(
            tuple(pool), best, val, val_perturbed, half.select, half.y_select, metric, ordered_soups
        )
        for combo in build_combinations(fitted):
            perturbed_score = combo.score(val_perturbed) if perturbed else None
            value = on_score.objective(metric, combo.score(val), perturbed_score)
            totals[combo.name] = totals.get(combo.name, 0.0) + value / len(folds)
    return totals


def _half_scores(half: _Parts, metric: str, m: _ViewsChosen) -> dict[str, float]:
    return {
        "rank_score": half.rank_score(metric, m.val, m.val_perturbed),
        "select_objective": half.objective(metric, m.val, m.val_perturbed),
    }


def _pick_shipped(shown: list[_Shown], recipe: EnsembleRecipe, best_member: float) -> _Shown:
    """The combination the recipe asks for. For auto: of those at least as good as the best member
    on the selection part (``best`` always is), the best cross-fitted (in-sample where the part was
    too small to halve); max() keeps the first of equals, the simpler."""
    wanted = requested_combination(recipe.combine, recipe.average)
    if wanted is not None:
        return next(s for s in shown if s.combination.name == wanted)
    eligible = [s for s in shown if s.row["select_objective"] >= best_member - 1e-12]

    def judged(s: _Shown) -> float:
        value = s.row["crossfit_objective"]
        return s.row["select_objective"] if math.isnan(value) else value

    return max(eligible, key=judged)


def _estimate(
    shipped: _Shown, best_val: np.ndarray, parts: _Parts, perturbed: bool
) -> dict[str, float]:
    """The ensemble run's metrics: the shipped combination and the best member (``best_val``, its
    valset log-odds) on the selection part, and on the report part when there is one (with a 95%
    bootstrap interval of the shipped one's AUC there; also on the perturbed copy of it when that
    was scored)."""
    row, n_members = shipped.row, len(shipped.combination.members)
    metrics = {
        tracking.SELECT_AUC: row["select_auc_tta"],
        tracking.BEST_MEMBER_SELECT_AUC: roc_auc(parts.y_select, best_val[parts.select]),
        tracking.N_MEMBERS: float(n_members),
    }
    if len(parts.report):
        low, high = bootstrap_auc_interval(parts.y_report, shipped.val_score[parts.report])
        metrics.update(
            {
                tracking.HOLDOUT_AUC: row["holdout_auc_tta"],
                tracking.HOLDOUT_AUC_LOW: low,
                tracking.HOLDOUT_AUC_HIGH: high,
                tracking.HOLDOUT_AUC_NO_TTA: row["holdout_auc_no_tta"],
                tracking.HOLDOUT_TPR: tpr_at_fpr(parts.y_report, shipped.val_score[parts.report]),
                tracking.BEST_MEMBER_HOLDOUT_AUC: roc_auc(parts.y_report, best_val[parts.report]),
            }
        )
        if perturbed:
            holdout_robust_auc = row["holdout_robust_auc"]
            metrics[tracking.HOLDOUT_ROBUST_AUC] = holdout_robust_auc
            metrics[tracking.HOLDOUT_WORST_AUC] = min(
                metrics[tracking.HOLDOUT_AUC], holdout_robust_auc
            )
    return metrics


def _has_perturbed(candidates: list[MemberPredictions], recipe: EnsembleRecipe) -> bool:
    """Whether every candidate was scored on the perturbed valset; refuse what cannot be built."""
    members = sum(not c.soup for c in candidates)
    if recipe.top_k > members:
        raise ValueError(f"top_k={recipe.top_k} but only {members} candidates")
    perturbed = all(c.val_robust is not None for c in candidates)
    if recipe.metric in robust_metrics() and not perturbed:
        raise ValueError(
            f"metric {recipe.metric} needs every candidate's predictions on the perturbed valset"
        )
    return perturbed


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
    perturbed = _has_perturbed(candidates, recipe)
    parts, metric = _Parts.of(targets, select, report), recipe.metric
    chosen = {c.name: _choose_views(c, recipe, parts, perturbed) for c in candidates}
    rows = {c.name: _member_row(c, chosen[c.name], metric, parts) for c in candidates}
    soups = [c.name for c in candidates if c.soup]
    ranked, pool, best = _rank(
        {n: r for n, r in rows.items() if n not in soups}, metric, recipe.top_k
    )
    soups = sorted(soups, key=lambda n: -rows[n]["select_objective"])  # best first
    val_perturbed = _each(chosen, "val_perturbed") if perturbed else {}
    pool_scores = Pool(
        tuple(pool),
        best,
        _each(chosen, "val"),
        val_perturbed,
        parts.select,
        parts.y_select,
        metric,
        tuple(soups),
    )
    shown = [
        _combination_row(combo, chosen, metric, parts, perturbed)
        for combo in build_combinations(pool_scores)
    ]
    crossfit = _crossfit(rows, chosen, soups, recipe, parts, perturbed)
    for item in shown:
        item.row["crossfit_objective"] = crossfit.get(item.combination.name, math.nan)
    shipped = _pick_shipped(shown, recipe, rows[best]["select_objective"])
    shipped.row["shipped"] = True
    combo = shipped.combination
    weights = dict(zip(combo.members, combo.weights, strict=True))
    for name, w in weights.items():
        rows[name]["weight"] = w
    return EnsembleResult(
        chosen=combo.name,
        scale=combo.scale,
        members=list(combo.members),
        weights=weights,
        views={name: member.views for name, member in chosen.items()},
        test_pred=to_probability(combo.score(_each(chosen, "test")), combo.scale),
        member_test_preds={n: chosen[n].test for n in combo.members},
        report_pred=shipped.val_score[parts.report],
        report_targets=parts.y_report,
        member_report_preds={n: chosen[n].val[parts.report] for n in combo.members},
        table=pd.DataFrame([rows[n] for n in [*ranked, *soups]] + [s.row for s in shown]),
        metrics=_estimate(shipped, chosen[best].val, parts, perturbed),
    )
