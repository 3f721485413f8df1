"""Score decoded images with a model: log-odds of fake for each TTA view, in full precision.

Shared by training (each epoch's validation) and prediction (ensembles, ``ffdi-tune predict``), so
both score exactly alike. Scores are log-odds ``logit(fake) - logit(real)`` in float64 taken from
float32 logits: under autocast only the body (``forward_features``) runs in bf16/fp16, the head runs
in float32, and nothing is squashed into a probability that confident models would round to 1.
"""

from __future__ import annotations

import numpy as np
import torch

from ffdi_tune.data.loaders import eval_loader, to_model_input
from ffdi_tune.scoring.tta import apply_view

__all__ = ["view_log_odds", "probability"]


def _logits(model: torch.nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """float32 logits of a normalised batch; under ``amp_dtype`` only the body runs in it."""
    if amp_dtype is None:
        return model(x).float()
    with torch.autocast(x.device.type, dtype=amp_dtype):
        features = model.forward_features(x)
    return model.forward_head(features.float())  # the head in float32: scores keep their precision


@torch.no_grad()
def view_log_odds(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    views: list[str],
    batch_size: int = 64,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    crop: int | None = None,
) -> np.ndarray:
    """Log-odds of fake for each view and uint8 image: float64 array ``len(views) x len(images)``.

    Each batch is moved and normalised once; every view is a tensor op on it, on the device. With
    ``crop`` every view ends with a ``crop`` square cut from it (see
    :func:`~ffdi_tune.scoring.tta.apply_view`).
    """
    model.eval()
    device = mean.device
    log_odds = np.empty((len(views), len(images)), dtype=np.float64)
    start = 0
    for batch in eval_loader(images, batch_size):
        x = to_model_input(batch, mean, std, device, channels_last)
        for row, view in enumerate(views):
            logits = _logits(model, apply_view(view, x, crop), amp_dtype)
            log_odds[row, start : start + len(batch)] = (
                (logits[:, 1] - logits[:, 0]).double().cpu().numpy()
            )
        start += len(batch)
    return log_odds


def probability(log_odds: np.ndarray) -> np.ndarray:
    """Probability of fake from log-odds (the logistic function, in float64)."""
    from scipy.special import expit

    return expit(np.asarray(log_odds, dtype=np.float64))
