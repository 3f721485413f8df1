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
    "bootstrap_auc_interval",
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


def bootstrap_auc_interval(
    y_true: np.ndarray,
    score: np.ndarray,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of the ROC AUC: the real and the fake images are each
    resampled with replacement (their counts kept), ``resamples`` times with a fixed ``seed``; the
    ends are the ``(1 - level) / 2`` quantiles. It shows how much the AUC moves with the images
    drawn; it cannot show a shift between these images and others.

    Each resample is a vector of counts per image: its AUC is the count-weighted share of (real,
    fake) pairs in order (ties half), from the reals' cumulative counts at each fake's place among
    the sorted reals, so a resample costs O(images), not a sort.
    """
    y = check_both_classes(y_true)
    z = np.asarray(score, dtype=np.float64)
    real, fake = np.sort(z[y == 0]), z[y == 1]
    below = np.searchsorted(real, fake, side="left")  # reals strictly below each fake
    upto = np.searchsorted(real, fake, side="right")  # ... and those tied with it
    rng = np.random.default_rng(seed)
    aucs = []
    for chunk in np.array_split(np.arange(resamples), max(1, resamples // 100)):
        n = len(chunk)
        real_counts = rng.multinomial(len(real), np.full(len(real), 1 / len(real)), size=n)
        fake_counts = rng.multinomial(len(fake), np.full(len(fake), 1 / len(fake)), size=n)
        cum = np.concatenate([np.zeros((n, 1)), np.cumsum(real_counts, axis=1)], axis=1)
        ordered = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])
        aucs.append((fake_counts * ordered).sum(axis=1) / (len(real) * len(fake)))
    tail = (1 - level) / 2
    low, high = np.quantile(np.concatenate(aucs), [tail, 1 - tail])
    return float(low), float(high)
