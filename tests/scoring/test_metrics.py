"""Metrics agree with scikit-learn / hand computation, keep full precision, and refuse one class."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import log_loss, roc_auc_score

from ffdi_tune.scoring.metrics import binary_metrics, roc_auc, tpr_at_fpr


def test_auc_acc_loss_against_reference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    z = y * 1.5 + rng.normal(0, 1.5, 500)  # log-odds of fake
    m = binary_metrics(y, z)
    assert m["val_auc"] == roc_auc_score(y, z)
    assert m["val_acc"] == np.mean((z >= 0) == y)
    assert m["val_loss"] == pytest.approx(log_loss(y, expit(z)), rel=1e-9)


def test_log_loss_of_confident_log_odds_is_exact():
    """Clipping probabilities at 1e-7 would cap both losses; log-odds give the true values."""
    m = binary_metrics(np.array([1, 0]), np.array([40.0, 40.0]))
    assert m["val_loss"] == pytest.approx((np.log1p(np.exp(-40.0)) + 40.0) / 2, rel=1e-12)
    # what a clip at 1e-7 would have reported for the real image
    assert m["val_loss"] > -np.log(1e-7) / 2


def test_tpr_at_fpr_by_hand():
    # 1000 negatives; the highest negative scores 0.95, so at FPR <= 1e-3 we may accept one of them
    neg = np.linspace(0, 0.95, 1000)
    pos = np.array([0.99, 0.97, 0.96, 0.94, 0.5])
    y = np.r_[np.zeros(1000), np.ones(5)]
    s = np.r_[neg, pos]
    # threshold at 0.95 admits 1 negative (FPR=0.001) and 3 positives
    assert tpr_at_fpr(y, s, 1e-3) == 3 / 5
    assert tpr_at_fpr(y, s, 0.0) == 3 / 5
    assert binary_metrics(y, s)["val_tpr_at_fpr_0.001"] == 3 / 5


def test_tpr_at_fpr_boundary_is_inclusive():
    """FPR exactly at the target counts (<=); a false positive more does not (no interpolation)."""
    y = np.r_[np.zeros(2000), np.ones(4)]
    neg = np.linspace(0.0, 0.5, 2000)
    neg[-2:] = [0.92, 0.9]  # two negatives above three of the positives
    s = np.r_[neg, [0.95, 0.91, 0.8, 0.7]]
    # thresholds: 0.95 -> FPR 0, TPR 1/4; 0.91 -> FPR 1/2000, TPR 2/4; 0.9 -> FPR 2/2000 = 1e-3, TPR
    # 2/4; 0.8 -> FPR 1e-3, TPR 3/4 (exactly at the target: counts); 0.7 -> still FPR 1e-3: TPR 4/4
    assert tpr_at_fpr(y, s, 1e-3) == 1.0
    # strictly below the boundary: only one negative allowed
    assert tpr_at_fpr(y, s, 0.99e-3) == 2 / 4
    assert tpr_at_fpr(y, s, 0.0) == 1 / 4


def test_tpr_at_fpr_with_ties():
    """A negative tied with positives comes in at the same threshold as they do."""
    y = np.r_[np.zeros(1000), np.ones(3)]
    s = np.r_[np.linspace(0, 0.5, 999), [0.9], [0.9, 0.9, 0.2]]
    # threshold 0.9 takes the tied negative (FPR 1e-3) and both tied positives
    assert tpr_at_fpr(y, s, 1e-3) == 2 / 3
    assert tpr_at_fpr(y, s, 0.5e-3) == 0.0  # nothing can be accepted without that negative


def test_single_class_is_a_clear_error():
    for f in (roc_auc, tpr_at_fpr, binary_metrics):
        with pytest.raises(ValueError, match="need both classes"):
            f(np.ones(5), np.arange(5.0))


def test_perfect_and_prefix():
    m = binary_metrics(np.array([0, 1, 0, 1]), np.array([-2.0, 2.0, -1.0, 1.0]), prefix="test_")
    assert m["test_auc"] == 1.0 and m["test_tpr_at_fpr_0.001"] == 1.0 and m["test_acc"] == 1.0


def test_the_bootstrap_interval_holds_the_auc_and_narrows_with_more_images():
    from ffdi_tune.scoring.metrics import bootstrap_auc_interval

    rng = np.random.default_rng(0)

    def sample(n):
        y = np.r_[np.zeros(n), np.ones(n)]
        return y, rng.normal(0, 1, 2 * n) + 1.0 * y

    y, z = sample(100)
    low, high = bootstrap_auc_interval(y, z)
    assert low < roc_auc(y, z) < high
    assert bootstrap_auc_interval(y, z) == (low, high)  # seeded: the same every time
    y_big, z_big = sample(2000)
    low_big, high_big = bootstrap_auc_interval(y_big, z_big, resamples=300)
    assert high_big - low_big < (high - low) / 2  # 20x the images: about 1/sqrt(20) as wide
    # the true AUC of two unit normals one apart, Phi(1 / sqrt 2) = 0.760, is inside
    assert low_big < 0.760 < high_big
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_auc_interval(np.zeros(5), np.arange(5.0))
    # ties count half, as in roc_auc: a constant score's interval is the point 0.5
    assert bootstrap_auc_interval(y, np.zeros_like(z)) == (0.5, 0.5)


def test_a_bootstrap_resample_is_scored_as_scikit_learn_scores_it():
    """The weighted-pairs AUC of one resample equals roc_auc_score on the resampled images."""
    from ffdi_tune.scoring.metrics import bootstrap_auc_interval

    y = np.array([0, 0, 0, 1, 1, 1, 1])
    z = np.array([0.1, 0.5, 0.5, 0.5, 0.9, 0.2, 0.7])
    # with one resample the interval collapses to that resample's AUC; redo its draws by hand
    low, high = bootstrap_auc_interval(y, z, resamples=1, seed=3)
    rng = np.random.default_rng(3)
    real, fake = np.sort(z[y == 0]), z[y == 1]
    rc = rng.multinomial(3, np.full(3, 1 / 3), size=1)[0]
    fc = rng.multinomial(4, np.full(4, 1 / 4), size=1)[0]
    drawn = np.r_[np.repeat(real, rc), np.repeat(fake, fc)]
    labels = np.r_[np.zeros(3), np.ones(4)]
    assert low == high == pytest.approx(roc_auc_score(labels, drawn))
