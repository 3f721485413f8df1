"""Metrics agree with scikit-learn / hand computation."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from ffdi_tune.metrics import binary_metrics, tpr_at_fpr


def test_auc_acc_loss_against_reference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    m = binary_metrics(y, p)
    assert m["val_auc"] == roc_auc_score(y, p)
    assert m["val_acc"] == np.mean((p >= 0.5) == y)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    assert np.isclose(m["val_loss"], -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))


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


def test_perfect_and_prefix():
    m = binary_metrics(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]), prefix="test_")
    assert m["test_auc"] == 1.0 and m["test_tpr_at_fpr_0.001"] == 1.0 and m["test_acc"] == 1.0
