"""Ensemble arithmetic: the selection/report split and the ways to combine member probabilities.

Plain numpy functions, no I/O: :func:`holdout_split`, :func:`mean_combine`, :func:`rank_combine`
and :func:`greedy_select` (Caruana et al., 2004: forward selection with replacement).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

__all__ = ["holdout_split", "mean_combine", "rank_combine", "greedy_select", "COMBINERS"]


def holdout_split(targets: np.ndarray, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of validation indices into (selection, report) halves.

    >>> sel, rep = holdout_split(np.array([0, 1] * 10), 0.5, seed=0)
    >>> len(sel), len(rep)
    (10, 10)
    """
    idx = np.arange(len(targets))
    sel, rep = train_test_split(idx, test_size=holdout_fraction, stratify=targets, random_state=seed)
    return np.sort(sel), np.sort(rep)


def mean_combine(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of member probabilities; ``probs`` is ``members x images``."""
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    return (w[:, None] * probs).sum(0) / w.sum()


def rank_combine(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of each member's normalised ranks, in [0, 1] (ties share their mean rank).

    Only the order of each member's scores counts, which is all ROC AUC sees; members whose
    probabilities are calibrated differently then weigh alike.
    """
    n = probs.shape[1]
    ranks = np.stack([(rankdata(p) - 1) / max(n - 1, 1) for p in probs])
    return mean_combine(ranks, weights)


def greedy_select(probs: np.ndarray, targets: np.ndarray, max_rounds: int = 50) -> np.ndarray:
    """Caruana forward selection with replacement; returns integer counts (weights) per member.

    Each round adds the member (possibly again) whose addition gives the highest AUC of the mean;
    it stops when no addition raises the AUC. Ties go to the lower index (better-ranked member).
    ``probs`` is ``members x images``, or ``valsets x members x images`` (e.g. clean and perturbed
    copies of the same images): the AUC is then the lowest over the valsets, so a member is added
    only when the ensemble's worst case improves.
    """
    sets = probs[None] if probs.ndim == 2 else probs
    counts = np.zeros(sets.shape[1], dtype=np.int64)
    total = np.zeros((len(sets), sets.shape[2]))
    best_auc = -np.inf
    for _ in range(max_rounds):
        k = counts.sum() + 1
        aucs = [min(roc_auc_score(targets, (total[v] + sets[v, m]) / k) for v in range(len(sets)))
                for m in range(sets.shape[1])]
        j = int(np.argmax(aucs))
        if aucs[j] <= best_auc:
            break
        best_auc = aucs[j]
        counts[j] += 1
        total += sets[:, j]
    return counts


COMBINERS = {"mean": mean_combine, "rank": rank_combine}
