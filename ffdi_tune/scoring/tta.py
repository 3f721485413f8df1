"""Test-time augmentation views of an already-decoded batch: exact flips and rotations, and scales.

A view is a function of a ``B x C x H x W`` tensor, so every image is decoded once per member and
each view is a cheap tensor op (on the device, when there is one). ``scale<s>`` (``scale0.9``,
``scale1.1``; ``s`` from 0.5 to 2) resizes the batch by ``s`` (bilinear, antialiased) and brings it
back to its side: a centre crop when it grew (a zoom in), a reflected border when it shrank (a
zoom out), so every model sees the input size it was trained at.

A member trained with ``resize: crop`` is scored on the cache's larger squares: every view then
ends with the centre square of the member's side (a cut, not a resize), and the corner views
``crop_tl``, ``crop_tr``, ``crop_bl``, ``crop_br`` cut that square from a corner instead. A member
fed whole frames has no border to cut: its corner views equal ``identity``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ffdi_tune.errors import did_you_mean

__all__ = ["TTA_VIEWS", "CORNER_VIEWS", "SCALE_RANGE", "check_views", "apply_view"]

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
# corner crops: (rows, columns) from the top/left (0) or the bottom/right (1)
CORNER_VIEWS = {"crop_tl": (0, 0), "crop_tr": (0, 1), "crop_bl": (1, 0), "crop_br": (1, 1)}


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
        if v not in TTA_VIEWS and v not in CORNER_VIEWS and _scale_of(v) is None:
            names = {**TTA_VIEWS, **CORNER_VIEWS}
            raise ValueError(
                f"unknown TTA view {v!r}{did_you_mean(v, names)}; valid views are "
                f"{', '.join(names)} and scale<s> with s from {SCALE_RANGE[0]} to "
                f"{SCALE_RANGE[1]} (e.g. scale0.9, scale1.1)"
            )
    if len(set(views)) != len(views):
        raise ValueError(f"tta lists a view twice: {views}")
    return views


def apply_view(name: str, batch: torch.Tensor, crop: int | None = None) -> torch.Tensor:
    """View ``name`` of a ``B x C x H x W`` float batch; with ``crop`` (smaller than the batch's
    side), cut to a ``crop`` square: its centre, or for a corner view that corner."""
    side = batch.shape[-1]
    cut = crop is not None and crop < side
    if name in CORNER_VIEWS:
        if not cut:
            return batch
        row, col = CORNER_VIEWS[name]
        top, left = row * (side - crop), col * (side - crop)
        return batch[..., top : top + crop, left : left + crop]
    viewed = TTA_VIEWS[name](batch) if name in TTA_VIEWS else _scaled(batch, _scale_of(name))
    if not cut:
        return viewed
    top = (side - crop) // 2
    return viewed[..., top : top + crop, top : top + crop]
