"""Scoring keeps full precision: float32 logits from the head under AMP, and log-odds that keep
their order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffdi_tune.models.factory import create_model
from ffdi_tune.scoring.inference import probability, view_log_odds


def test_under_autocast_only_the_body_runs_in_low_precision():
    model = create_model("test_resnet").eval()
    seen = {}
    model.get_classifier().register_forward_hook(
        lambda m, args, out: seen.update(head_in=args[0].dtype, head_out=out.dtype)
    )
    model.forward_features = (lambda f: lambda x: seen.setdefault("body", f(x).dtype) and f(x))(
        model.forward_features
    )
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.5] * 3)
    amp = view_log_odds(model, images, mean, std, ["identity"], amp_dtype=torch.bfloat16)
    assert seen == {"body": torch.bfloat16, "head_in": torch.float32, "head_out": torch.float32}
    full = view_log_odds(model, images, mean, std, ["identity"])
    # bf16 body: close, not equal
    assert amp.dtype == np.float64 and np.allclose(amp, full, atol=0.1)


class FixedLogits(torch.nn.Module):
    """Answers logits (0, z), z the mean of the input's first channel."""

    def forward(self, x):
        z = x[:, 0].mean((1, 2))
        return torch.stack([torch.zeros_like(z), z], 1)


def test_confident_scores_stay_apart():
    """float32 softmax rounds both to 1.0; the log-odds, and their float64 probabilities, keep
    them apart."""
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    images[0], images[1] = 200, 210
    # the model sees pixel / 10: log-odds 20 and 21
    mean, std = (
        torch.zeros(3),
        torch.full((3,), 10 / 255),
    )
    z = view_log_odds(FixedLogits(), images, mean, std, ["identity"])[0]
    # beyond where float32 probabilities saturate
    assert z.tolist() == pytest.approx([20.0, 21.0], abs=1e-4)
    softmax = torch.tensor([[0.0, z[0]], [0.0, z[1]]], dtype=torch.float32).softmax(1)[:, 1]
    assert softmax[0] == softmax[1] == 1.0
    p = probability(z)
    assert p[0] < p[1] < 1.0
