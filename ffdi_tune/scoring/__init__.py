"""Scoring: turning models and images into numbers that can be compared.

``epoch_metrics`` is the registry of per-epoch metrics and their directions; ``metrics`` computes
AUC, TPR at a low FPR, accuracy and log loss; ``tta`` defines the test-time views; ``inference``
gives full-precision log-odds per view; ``predict`` loads a trial's checkpoint and scores every
view from one decode; ``combine`` is the arithmetic of combining members' scores (weighted
averages of probabilities or log-odds, rank average, greedy selection). Used by training, the
search, the final stage and the logged ensemble model alike.
"""

from ffdi_tune.scoring.epoch_metrics import best_value, check_metric, higher_is_better, is_better
from ffdi_tune.scoring.metrics import binary_metrics, roc_auc, tpr_at_fpr
from ffdi_tune.scoring.predict import load_member, predict_views
from ffdi_tune.scoring.tta import TTA_VIEWS, apply_view, check_views

__all__ = [
    "best_value",
    "check_metric",
    "higher_is_better",
    "is_better",
    "binary_metrics",
    "roc_auc",
    "tpr_at_fpr",
    "TTA_VIEWS",
    "apply_view",
    "check_views",
    "load_member",
    "predict_views",
]
