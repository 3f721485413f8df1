"""Training: one trial, from its settings to ``best.pt``, as a plain function.

``settings`` is the ``train:`` section of a search space; ``optimization`` builds the optimizer,
the learning-rate schedule, MixUp / CutMix and AMP; ``placement`` decides where augmentation runs
(device, gather, loader workers); ``trial.train_trial`` runs the epochs, scores each on the
selection part of valset and reports it. No Ray and no MLflow: a search passes a reporter in.
"""

from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import BEST_FILE, LAST_FILE, Reporter, train_trial

__all__ = [
    "TrainSettings",
    "BEST_FILE",
    "LAST_FILE",
    "Reporter",
    "train_trial",
]
