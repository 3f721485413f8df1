"""One trial's submission (``ffdi-tune predict``): its best checkpoint, read from MLflow, scored on
testset with TTA views and no ensemble."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.submission import submission_text
from ffdi_tune.files import write_atomic
from ffdi_tune.scoring.inference import probability
from ffdi_tune.scoring.predict import DecodedSplits, load_member, predict_views
from ffdi_tune.tracking import Tracker

__all__ = ["predict_run"]


def predict_run(
    tracker: Tracker,
    run_id: str,
    data: DataConfig,
    views: list[str],
    out: Path,
    batch_size: int = 64,
) -> Path:
    """Write ``out``, the submission of the trial run ``run_id``'s ``checkpoint/best.pt`` on the
    test split of ``data``: the probability of its log-odds averaged over ``views``."""
    splits = DecodedSplits(data)
    test = splits.split("test")
    with tempfile.TemporaryDirectory(prefix="ffdi-predict-") as tmp:
        member = load_member(tracker.download(run_id, "checkpoint/best.pt", Path(tmp)), run_id)
        prob = probability(
            predict_views(member, splits.for_member("test", member), views, batch_size).mean(0)
        )
    return write_atomic(out, submission_text(test.names, prob))
