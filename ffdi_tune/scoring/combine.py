"""Ensemble arithmetic on members' log-odds of fake: averages, rank average, greedy selection.

Plain numpy functions, no I/O. Inputs are ``members x images`` arrays of log-odds (what
:mod:`ffdi_tune.scoring.inference` produces); each combiner returns a score that grows with the
chance of fake, and :func:`to_probability` turns it into the submission's ``y_pred``:

- :func:`mean_probability`: weighted mean of the members' probabilities;
- :func:`mean_log_odds`: weighted mean of their log-odds (members trained with different label
  smoothing or mixup are calibrated differently; averaging log-odds weighs their confidence alike);
- :func:`rank_average`: weighted mean of each member's normalised ranks, which is all ROC AUC sees
  (within the scored images, or each image placed among a member's reference scores on its own:
  :func:`rank_among`);
- :func:`greedy_select`: Caruana et al. (2004) forward selection with replacement, either average.

``SCALES`` gives the weighted combiner of each scale a combination averages on (``prob``,
``logit``, ``rank``); ``AVERAGES`` the two a recipe's ``average`` may name.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

__all__ = [
    "AVERAGES",
    "SCALES",
    "mean_probability",
    "mean_log_odds",
    "rank_average",
    "rank_among",
    "greedy_select",
    "to_probability",
]


def _weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def mean_probability(log_odds: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of member probabilities (a probability)."""
    return _weights(len(log_odds), weights) @ expit(log_odds)


def mean_log_odds(log_odds: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of member log-odds (a log-odds)."""
    return _weights(len(log_odds), weights) @ np.asarray(log_odds, dtype=np.float64)


def rank_average(
    log_odds: np.ndarray,
    weights: np.ndarray | None = None,
    references: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Weighted mean of each member's normalised ranks, in [0, 1] (ties share their mean rank):
    ranks among the scored images, or with ``references`` (one array of scores per member) each
    image's place among its member's references (:func:`rank_among`), which does not depend on
    the other images scored with it."""
    if references is None:
        n = log_odds.shape[1]
        ranks = np.stack([(rankdata(z) - 1) / max(n - 1, 1) for z in log_odds])
    else:
        ranks = np.stack([rank_among(z, r) for z, r in zip(log_odds, references, strict=True)])
    return _weights(len(log_odds), weights) @ ranks


def rank_among(scores: np.ndarray, reference: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
    """Each score's normalised rank among ``reference``, in [0, 1]: for a score that is one of the
    references, its rank among them as :func:`rank_average` gives it (ties share their mean rank);
    below or above every reference, 0 or 1. A score that is no reference but lies within
    ``tolerance`` (relative, absolute below 1) of one counts as equal to it: an image scored in
    another batch differs from its own reference by a few float rounding errors.

    >>> rank_among(np.array([0.5, 2.0, -9.0, 9.0, 1.00000003]), np.array([0.0, 1.0, 2.0]))
    array([0.25, 1.  , 0.  , 1.  , 0.5 ])
    """
    scores = np.asarray(scores, dtype=np.float64)
    ordered = np.sort(np.asarray(reference, dtype=np.float64))
    below = np.searchsorted(ordered, scores, side="left")
    at_most = np.searchsorted(ordered, scores, side="right")
    slack = tolerance * np.maximum(np.abs(scores), 1.0)
    near = below == at_most  # not a reference itself
    below[near] = np.searchsorted(ordered, (scores - slack)[near], side="left")
    at_most[near] = np.searchsorted(ordered, (scores + slack)[near], side="right")
    # below + (ties - 1) / 2: the mean 0-based rank a tie with the references would share
    return np.clip((below + at_most - 1) / 2 / max(len(ordered) - 1, 1), 0.0, 1.0)


# average name -> (combiner, the scale of its output)
AVERAGES = {"prob": (mean_probability, "prob"), "logit": (mean_log_odds, "logit")}

# score scale -> (the weighted combiner that averages on it, what it averages, in words)
SCALES = {
    "prob": (mean_probability, "probabilities"),
    "logit": (mean_log_odds, "log-odds"),
    "rank": (rank_average, "ranks"),
}


def to_probability(score: np.ndarray, scale: str) -> np.ndarray:
    """A combined score on ``scale`` (``prob``, ``logit`` or ``rank``) as a probability-like value
    in [0, 1]."""
    if scale == "logit":
        return expit(score)
    if scale in ("prob", "rank"):
        return np.clip(score, 0.0, 1.0)  # float sums may stray by an ulp
    raise ValueError(f"unknown score scale {scale!r}; valid scales are {', '.join(SCALES)}")


def greedy_select(
    log_odds: np.ndarray, targets: np.ndarray, average: str = "prob", max_rounds: int = 50
) -> np.ndarray:
    """Caruana forward selection with replacement; returns integer counts (weights) per member.

    Each round adds the member (possibly again) whose addition gives the highest AUC of the
    ``average`` (``prob`` or ``logit``) of the chosen members; it stops when no addition raises the
    AUC. Ties go to the lower index (better-ranked member). ``log_odds`` is ``members x images``, or
    ``valsets x members x images`` (e.g. clean and perturbed copies of the same images): the AUC
    is then the lowest over the valsets, so a member is added only when the worst case improves.
    """
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}; valid averages are {', '.join(AVERAGES)}")
    sets = log_odds[None] if log_odds.ndim == 2 else log_odds
    # on probabilities or on log-odds, either average is then a plain mean of the chosen members
    sets = expit(sets) if average == "prob" else np.asarray(sets, dtype=np.float64)
    counts = np.zeros(sets.shape[1], dtype=np.int64)
    total = np.zeros((len(sets), sets.shape[2]))
    best_auc = -np.inf
    for _ in range(max_rounds):
        k = counts.sum() + 1
        aucs = [
            min(roc_auc_score(targets, (total[v] + sets[v, m]) / k) for v in range(len(sets)))
            for m in range(sets.shape[1])
        ]
        j = int(np.argmax(aucs))
        if aucs[j] <= best_auc:
            break
        best_auc = aucs[j]
        counts[j] += 1
        total += sets[:, j]
    return counts
