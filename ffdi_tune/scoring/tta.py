"""Test-time augmentation views of an already-decoded batch: exact flips and rotations, and scales.

A view is a function of a ``B x C x H x W`` tensor, so every image is decoded once per member and
each view is a cheap tensor op (on the device, when there is one). ``scale<s>`` (``scale0.9``,
``scale1.1``; ``s`` from 0.5 to 2) resizes the batch by ``s`` (bilinear, antialiased) and brings it
back to its side: a centre crop when it grew (a zoom in), a reflected border when it shrank (a
zoom out), so every model sees the input size it was trained at.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ffdi_tune.errors import did_you_mean

__all__ = ["TTA_VIEWS", "SCALE_RANGE", "check_views", "apply_view"]

SCALE_RANGE = (0.5, 2.0)  # the factors a scale view may name
_SCALE = re.compile(r"scale(\d+(?:\.\d+)?)")

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


def _scale_of(name: str) -> float | None:
    """The factor of a ``scale<s>`` view name within :data:`SCALE_RANGE` (None: not one)."""
    match = _SCALE.fullmatch(name)
    if match is None:
        return None
    factor = float(match.group(1))
    return factor if SCALE_RANGE[0] <= factor <= SCALE_RANGE[1] and factor != 1 else None


def _scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` resized by ``factor``, then centre-cropped or reflect-padded back to its side."""
    h, w = x.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=factor < 1, align_corners=False)
    if factor > 1:
        top, left = (nh - h) // 2, (nw - w) // 2
        return y[..., top : top + h, left : left + w]
    top, left = (h - nh) // 2, (w - nw) // 2
    return F.pad(y, (left, w - nw - left, top, h - nh - top), mode="reflect")


def check_views(views: list[str]) -> list[str]:
    """Return ``views`` or raise ValueError naming the unknown one and the valid names."""
    if not views:
        raise ValueError("tta needs at least one view, e.g. [identity, hflip]")
    for v in views:
        if v not in TTA_VIEWS and _scale_of(v) is None:
            raise ValueError(
                f"unknown TTA view {v!r}{did_you_mean(v, TTA_VIEWS)}; valid views are "
                f"{', '.join(TTA_VIEWS)} and scale<s> with s from {SCALE_RANGE[0]} to "
                f"{SCALE_RANGE[1]} (e.g. scale0.9, scale1.1)"
            )
    if len(set(views)) != len(views):
        raise ValueError(f"tta lists a view twice: {views}")
    return views


def apply_view(name: str, batch: torch.Tensor) -> torch.Tensor:
    """View ``name`` of a ``B x C x H x W`` float batch."""
    if name in TTA_VIEWS:
        return TTA_VIEWS[name](batch)
    return _scaled(batch, _scale_of(name))
