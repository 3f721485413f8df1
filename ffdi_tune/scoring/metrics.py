"""Validation metrics of a binary real-vs-fake classifier (scikit-learn underneath).

Scores are log-odds of fake (``logit(fake) - logit(real)``) wherever a model produced them: AUC and
TPR depend only on their order, and log-odds keep that order where probabilities of confident
models round to the same float (``1 - 1e-9`` and ``1 - 1e-12`` are both ``1.0`` in float32).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "check_both_classes",
    "roc_auc",
    "tpr_at_fpr",
    "binary_metrics",
    "misordered_pairs_removed",
]


def check_both_classes(y_true: np.ndarray) -> np.ndarray:
    """``y_true`` as ints; ValueError unless both real (0) and fake (1) occur in it."""
    y = np.asarray(y_true).astype(int)
    if len(np.unique(y)) != 2:
        raise ValueError(
            "ROC metrics need both classes (0 = real, 1 = fake), but got only "
            f"{np.unique(y).tolist()} in {len(y)} labels; score a split that holds both"
        )
    return y


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of any score that grows with the chance of fake (ties count half)."""
    return float(roc_auc_score(check_both_classes(y_true), np.asarray(score, dtype=np.float64)))


def tpr_at_fpr(y_true: np.ndarray, score: np.ndarray, max_fpr: float = 1e-3) -> float:
    """The best true-positive rate among thresholds whose false-positive rate is <= ``max_fpr``.

    Every point of the ROC curve is considered (``drop_intermediate=False``) and nothing is
    interpolated: the value is that of an operating point one can actually choose. FPR exactly at
    ``max_fpr`` counts (``<=``). With fewer than ``1 / max_fpr`` real images the only admissible
    points have FPR 0. Raises ValueError on single-class labels.

    >>> tpr_at_fpr(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    1.0
    """
    fpr, tpr, _ = roc_curve(
        check_both_classes(y_true), np.asarray(score, dtype=np.float64), drop_intermediate=False
    )
    return float(tpr[fpr <= max_fpr].max())  # the first point, (0, 0) or better, always qualifies


def binary_metrics(
    y_true: np.ndarray, log_odds: np.ndarray, prefix: str = "val_"
) -> dict[str, float]:
    """ROC AUC, TPR at FPR = 1e-3, accuracy at p = 0.5 and log loss of log-odds of fake.

    The log loss is computed from the log-odds themselves (``log(1 + exp(-z))`` for a fake, of
    ``z`` for a real image), exactly: no probability is clipped.
    """
    y = check_both_classes(y_true)
    z = np.asarray(log_odds, dtype=np.float64)
    loss = np.where(y == 1, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))
    return {
        f"{prefix}auc": roc_auc(y, z),
        f"{prefix}tpr_at_fpr_0.001": tpr_at_fpr(y, z, 1e-3),
        f"{prefix}acc": float(np.mean((z >= 0) == (y == 1))),
        f"{prefix}loss": float(loss.mean()),
    }


def misordered_pairs_removed(auc: float, baseline_auc: float) -> float:
    """Share of ``baseline_auc``'s mis-ordered (real, fake) pairs that ``auc`` puts right (1 - AUC
    is the share of pairs ordered wrong); negative when it orders more of them wrong.

    >>> round(misordered_pairs_removed(0.9, 0.8), 6)
    0.5
    """
    return 1 - (1 - auc) / (1 - baseline_auc) if baseline_auc < 1 else 0.0
