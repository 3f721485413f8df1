"""Noise-residual input: fixed SRM high-pass filters stacked with RGB in front of any timm backbone.

Forgery traces (blending seams, resampling, a generator's noise) live in the high frequencies
that image content drowns out. The three classic 5x5 SRM kernels of Fridrich & Kodovsky's rich
models, as used by Zhou et al. ("Learning Rich Features for Image Manipulation Detection", the
RGB-N noise stream), suppress content and keep that residual. :class:`SrmInput` filters the grey
image with them, stacks the three responses with the three colour channels, and maps the six
channels back to three with a learned 1x1 convolution that starts as the identity on RGB, so a
backbone (pretrained or not) begins exactly where it would without the residuals and learns how
much of them to use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SRM_KERNELS", "SrmInput"]

# 5x5, each normalised by its central magnitude (as in RGB-N); every kernel sums to zero.
SRM_KERNELS = torch.tensor(
    [
        [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
        [
            [-1, 2, -2, 2, -1],
            [2, -6, 8, -6, 2],
            [-2, 8, -12, 8, -2],
            [2, -6, 8, -6, 2],
            [-1, 2, -2, 2, -1],
        ],
        [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
    ],
    dtype=torch.float32,
) / torch.tensor([4.0, 12.0, 2.0]).view(3, 1, 1)

# ITU-R BT.601 luma weights for the grey image the kernels see.
_GREY = (0.299, 0.587, 0.114)


class SrmInput(nn.Module):
    """``backbone(adapter(cat(rgb, srm(grey(rgb)))))``; looks like the timm model it wraps.

    >>> import timm
    >>> m = SrmInput(timm.create_model("resnet10t", num_classes=2))
    >>> m(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 2])
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        # Fixed filters, rebuilt from the constants: not part of the state dict.
        self.register_buffer("srm", SRM_KERNELS.unsqueeze(1).clone(), persistent=False)
        self.register_buffer("grey", torch.tensor(_GREY).view(1, 3, 1, 1), persistent=False)
        self.adapter = nn.Conv2d(6, 3, kernel_size=1, bias=True)
        with torch.no_grad():
            self.adapter.weight.zero_()
            self.adapter.weight[:, :3, 0, 0] = torch.eye(3)
            self.adapter.bias.zero_()

    # What the rest of the code reads off a timm model.
    @property
    def pretrained_cfg(self) -> dict:
        return self.backbone.pretrained_cfg

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """The three SRM responses of the grey image of ``x`` (``B x 3 x H x W``)."""
        grey = (x * self.grey.to(x.dtype)).sum(1, keepdim=True)
        return F.conv2d(grey, self.srm.to(x.dtype), padding=2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(
            self.adapter(torch.cat([x, self.residuals(x)], dim=1))
        )

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(features)

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
