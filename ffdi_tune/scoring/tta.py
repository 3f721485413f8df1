"""Test-time augmentation views: exact flips and rotations of an already-decoded batch.

A view is a function of a ``B x C x H x W`` tensor, so every image is decoded once per member and
each view is a cheap tensor op (on the device, when there is one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ffdi_tune.errors import did_you_mean

__all__ = ["TTA_VIEWS", "check_views", "apply_view"]

TTA_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot180": lambda x: x.rot90(2, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.rot90(2, (-2, -1)).transpose(-2, -1),
}  # the eight symmetries of the square


def check_views(views: list[str]) -> list[str]:
    """Return ``views`` or raise ValueError naming the unknown one and the valid names."""
    if not views:
        raise ValueError("tta needs at least one view, e.g. [identity, hflip]")
    for v in views:
        if v not in TTA_VIEWS:
            raise ValueError(
                f"unknown TTA view {v!r}{did_you_mean(v, TTA_VIEWS)}; valid views are "
                f"{', '.join(TTA_VIEWS)}"
            )
    if len(set(views)) != len(views):
        raise ValueError(f"tta lists a view twice: {views}")
    return views


def apply_view(name: str, batch: torch.Tensor) -> torch.Tensor:
    """View ``name`` of a ``B x C x H x W`` batch."""
    return TTA_VIEWS[name](batch)
