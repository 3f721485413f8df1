"""Training: one trial, from its settings to ``best.pt``, as a plain function.

``settings`` is the ``train:`` section of a search space; ``optimization`` builds the optimizer,
the learning-rate schedule, MixUp / CutMix and AMP; ``placement`` decides where augmentation runs
(device, gather, loader workers); ``state`` builds everything a trial trains with; ``epoch`` trains
one pass over trainset and scores it on valset (its selection part in a search); ``checkpoint``
writes ``best.pt`` and ``last.pt`` and resumes from them; ``trial.train_trial`` runs the epochs
and reports each. No Ray and no MLflow: a search passes a reporter in.
"""

from ffdi_tune.training.checkpoint import BEST_FILE, LAST_FILE, Reporter
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import train_trial

__all__ = [
    "TrainSettings",
    "BEST_FILE",
    "LAST_FILE",
    "Reporter",
    "train_trial",
]
