"""What batched flips must give: each image the original or one of its flips, with the set's odds.

Shared by the augmentation tests (flips on the device) and the loader tests (flips while gathering).
"""

from __future__ import annotations

import pytest
import torch

__all__ = ["check_flip_mix"]


def check_flip_mix(name: str, out: torch.Tensor, image: torch.Tensor) -> None:
    """Assert ``out`` (400 copies of ``image`` through set ``name``) holds the original and its
    flips, each copy drawn independently with the odds of ``hflip`` or ``flips``."""
    assert out.shape == (400, *image.shape) and out.dtype == torch.uint8

    def share(img):
        return float((out == img).flatten(1).all(1).float().mean())

    unchanged, h, v, hv = (
        share(image),
        share(image.flip(-1)),
        share(image.flip(-2)),
        share(image.flip(-1).flip(-2)),
    )
    if name == "hflip":
        assert 0.4 < h < 0.6 and h + unchanged == pytest.approx(1)
    else:  # each of the four outcomes about 1/4
        assert all(
            0.15 < x < 0.35 for x in (unchanged, h, v, hv)
        ) and unchanged + h + v + hv == pytest.approx(1)
