"""The submission file: ``img_name,y_pred``, one row per test image, every score written exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["submission_text"]


def submission_text(names: tuple[str, ...], prob: np.ndarray) -> str:
    """``img_name,y_pred`` CSV text; refuses NaN or values outside [0, 1].

    Each value is written with as many digits as it takes to read back the same float64, so two
    different scores are never written alike (rounding to a fixed 6 decimals would tie confident
    images, which decides AUC and TPR at low FPR).
    """
    prob = np.asarray(prob, dtype=np.float64)
    if len(prob) != len(names) or not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("submission probabilities must be finite, in [0, 1], one per test image")
    # without a float_format, pandas writes each float64 in full: it reads back the same
    return pd.DataFrame({"img_name": list(names), "y_pred": prob}).to_csv(index=False)
