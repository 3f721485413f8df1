"""Figures and tables for people: ROC curves, search history, parameter importance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ffdi_tune.scoring.epoch_metrics import best_value, higher_is_better

if TYPE_CHECKING:
    from ffdi_tune.ensemble.build import EnsembleResult

__all__ = [
    "plot_roc",
    "plot_search_history",
    "param_importance",
    "plot_param_importance",
    "format_ensemble_table",
    "summarise_search",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_roc(result: EnsembleResult, path: Path) -> Path:
    """ROC curves of the members and the ensemble on the report half."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    y = result.report_targets
    for name, p in result.member_report_preds.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1, alpha=0.6, label=f"{name[:8]} AUC {roc_auc_score(y, p):.4f}")
    fpr, tpr, _ = roc_curve(y, result.report_pred)
    ax.plot(
        fpr,
        tpr,
        lw=2.5,
        color="black",
        label=f"ensemble AUC {roc_auc_score(y, result.report_pred):.4f}",
    )
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC on the report half"
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_search_history(history: pd.DataFrame, metric: str, path: Path) -> Path:
    """Best-so-far metric against trial order and against wall time.

    ``history`` has one row per trial: ``start_time`` (s), ``end_time`` (s) and ``metric``.
    """
    plt = _pyplot()
    h = history.sort_values("end_time").reset_index(drop=True)
    best = h[metric].cummax() if higher_is_better(metric) else h[metric].cummin()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(range(1, len(h) + 1), h[metric], "o", alpha=0.5, label="trial")
    axes[0].step(range(1, len(h) + 1), best, where="post", label="best so far")
    axes[0].set(xlabel="trials finished", ylabel=metric)
    minutes = (h["end_time"] - h["start_time"].min()) / 60
    axes[1].step(minutes, best, where="post")
    axes[1].set(xlabel="minutes since start", ylabel=f"best {metric}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def param_importance(trials: pd.DataFrame, params: list[str], metric: str) -> dict[str, float]:
    """fANOVA importance of each searched parameter (Optuna's evaluator on the finished trials)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    usable = [p for p in params if p in trials and trials[p].nunique(dropna=True) > 1]
    rows = trials.dropna(subset=[metric] + usable)
    if len(usable) == 0 or len(rows) < 3:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {}
    for p in usable:
        values = rows[p]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            lo, hi = float(values.min()), float(values.max())
            dists[p] = FloatDistribution(lo, hi)
        else:
            dists[p] = CategoricalDistribution(sorted(set(map(str, values))))
    for _, row in rows.iterrows():
        params_ = {
            p: (float(row[p]) if isinstance(dists[p], FloatDistribution) else str(row[p]))
            for p in usable
        }
        study.add_trial(
            optuna.trial.create_trial(params=params_, distributions=dists, value=float(row[metric]))
        )
    return optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )


def plot_param_importance(importance: dict[str, float], path: Path) -> Path:
    plt = _pyplot()
    # room for the title and axis label even with a single parameter
    fig, ax = plt.subplots(figsize=(5, 1.6 + 0.4 * len(importance)), layout="constrained")
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names])
    ax.set(xlabel="fANOVA importance", title="what mattered in this search")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_ensemble_table(table: pd.DataFrame) -> str:
    """The members, then every combination, on both parts of valset; ``*`` marks what ships."""
    view = table.copy()
    # The perturbed-valset columns are there when the members were scored on it too.
    robust = [c for c in ("select_robust_auc", "holdout_robust_auc") if c in view]
    for c in (
        "select_auc_no_tta",
        "select_auc_tta",
        "holdout_auc_no_tta",
        "holdout_auc_tta",
        "weight",
        *robust,
    ):
        view[c] = view[c].map(
            lambda v: "-" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"
        )
    view["member"] = [
        ("* " if shipped else "  ") + (m if kind == "ensemble" else m[:12])
        for m, kind, shipped in zip(view["member"], view["kind"], view["shipped"], strict=True)
    ]
    cols = [
        "member",
        "label",
        "views",
        "weight",
        "select_auc_no_tta",
        "select_auc_tta",
        "holdout_auc_no_tta",
        "holdout_auc_tta",
        *robust,
    ]
    return view[cols].to_string(index=False)


def summarise_search(
    tracker,
    experiment_id: str,
    parent_id: str,
    rows,
    metric: str,
    trials_csv: Path,
    searched: list[str],
) -> None:
    """Log a search's totals, best trial, history and parameter importance on its parent run.

    ``tracker`` is a :class:`~ffdi_tune.tracking.store.Tracker`, ``rows`` the ranked
    :class:`~ffdi_tune.search.trials_table.TrialRow` s; the run times come from the trials' MLflow
    runs.
    """
    import tempfile

    from ffdi_tune import tracking

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
    times = {
        t.trial_id: (t.start_s, t.end_s or 0.0) for t in tracker.trials_of(experiment_id, parent_id)
    }
    history = pd.DataFrame(
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
    with tempfile.TemporaryDirectory(prefix="ffdi-plots-") as tmp:
        tracker.log_artifact(
            parent_id, plot_search_history(history, metric, Path(tmp) / "search_history.png")
        )
        importance = param_importance(history, searched, metric)
        if importance:
            tracker.log_artifact(
                parent_id, plot_param_importance(importance, Path(tmp) / "param_importance.png")
            )
