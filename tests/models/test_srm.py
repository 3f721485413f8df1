"""The SRM noise-residual input: fixed high-pass kernels and an adapter that starts as identity."""

from __future__ import annotations

import timm
import torch

from ffdi_tune.models.srm import SRM_KERNELS, SrmInput


def test_srm_adapter_starts_as_identity_and_kernels_are_high_pass():
    assert torch.allclose(SRM_KERNELS.sum((1, 2)), torch.zeros(3), atol=1e-6)
    backbone = timm.create_model("test_resnet", num_classes=2).eval()
    wrapped = SrmInput(backbone).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(wrapped(x), backbone(x), atol=1e-6)
    # a flat image has no residual; a checkerboard has a strong one
    assert wrapped.residuals(torch.full((1, 3, 16, 16), 0.7))[..., 2:-2, 2:-2].abs().max() < 1e-5
    board = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2).float().expand(1, 3, 16, 16)
    assert wrapped.residuals(board)[..., 2:-2, 2:-2].abs().mean() > 1
