"""Validation metrics of a binary real-vs-fake classifier (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score, roc_curve

__all__ = ["tpr_at_fpr", "binary_metrics"]


def tpr_at_fpr(y_true: np.ndarray, y_score: np.ndarray, max_fpr: float = 1e-3) -> float:
    """The highest true-positive rate among thresholds whose false-positive rate is <= ``max_fpr``.

    >>> tpr_at_fpr(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    1.0
    """
    fpr, tpr, _ = roc_curve(y_true, y_score)
    ok = fpr <= max_fpr
    return float(tpr[ok].max()) if ok.any() else 0.0


def binary_metrics(y_true: np.ndarray, prob_fake: np.ndarray, prefix: str = "val_") -> dict[str, float]:
    """ROC AUC, TPR at FPR=1e-3, accuracy at 0.5 and log loss of fake probabilities."""
    y_true = np.asarray(y_true).astype(int)
    p = np.clip(np.asarray(prob_fake, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {
        f"{prefix}auc": float(roc_auc_score(y_true, p)),
        f"{prefix}tpr_at_fpr_0.001": tpr_at_fpr(y_true, p, 1e-3),
        f"{prefix}acc": float(accuracy_score(y_true, p >= 0.5)),
        f"{prefix}loss": float(log_loss(y_true, p, labels=[0, 1])),
    }
