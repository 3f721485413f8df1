"""Figures for people, from plain data: ROC curves, search history, parameter importance."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ffdi_tune.scoring.epoch_metrics import higher_is_better

__all__ = [
    "plot_roc",
    "plot_search_history",
    "param_importance",
    "plot_param_importance",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    targets: np.ndarray,
    curves: Mapping[str, np.ndarray],
    path: Path,
    *,
    bold: str | None = None,
    title: str = "ROC",
) -> Path:
    """One ROC curve per entry of ``curves`` (legend name -> scores of the images labelled
    ``targets``, higher = more likely positive), in order, each with its AUC; the ``bold`` one is
    drawn thick and black."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, scores in curves.items():
        fpr, tpr, _ = roc_curve(targets, scores)
        style = {"lw": 2.5, "color": "black"} if name == bold else {"lw": 1, "alpha": 0.6}
        ax.plot(fpr, tpr, **style, label=f"{name} AUC {roc_auc_score(targets, scores):.4f}")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
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
