"""Forgery synthesis during training: self-blended images (Shiohara & Yamasaki, CVPR 2022).

With ``train.synth: {kind: selfblend, p: 0.3}`` a share ``p`` of the *real* images of each training
batch becomes a synthesised fake (label 1): the image is blended with an altered copy of itself
through a soft random mask. The copy differs from the original the way a pasted region differs from
its surroundings in a real face swap or splice:

- **resampling**: downscaled by 0.5-0.95 and scaled back (the pasted region went through another
  resize than the frame);
- **colour**: per-channel shifts, brightness and contrast (a colour mismatch at the seam);
- **sharpness**: a Gaussian blur or an unsharp mask (a sharpness mismatch);
- **a small shift**: up to 3% of the side (a misaligned paste, doubled edges).

The mask is an ellipse, the convex hull of random points, or a blob (thresholded smooth noise),
covering roughly 10-45% of the image, feathered by a Gaussian blur and scaled by a blend ratio, so
the seam ranges from hard to invisible. Every parameter is drawn per image from the given generator
(seeded: the same epoch, the same fakes). Outside the mask the image is unchanged.

What it simulates: blending boundaries and the statistical mismatch between a region and its frame,
which detectors of swapped faces and spliced regions learn to find without seeing a given
generator. What it does not: whole-image synthesis (a GAN or diffusion image has no seam), semantic
edits that re-render the region (inpainting with matching noise), and any trace tied to a
particular manipulation method. It runs after the decode cache and before every augmentation set,
so JPEG re-compression, flips and colour sets act on the synthesised fake as on any image.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torchvision.transforms.v2 import functional as TF

from ffdi_tune.strict import StrictModel

__all__ = ["SynthSettings", "MASK_SHAPES", "self_blend", "SelfBlender"]

MASK_SHAPES = ("ellipse", "hull", "blob")
_CUT = 0.5 / 255  # a mask weight below this changes no uint8 pixel: set to exactly 0
_RATIOS = (0.5, 0.75, 1.0, 1.0)  # how much of the altered copy shows at the mask's centre


class SynthSettings(StrictModel):
    """``train.synth``: which synthesis (``none`` or ``selfblend``) and the share ``p`` of real
    images of a batch it turns into fakes."""

    kind: Literal["none", "selfblend"] = "none"
    p: float = Field(0.3, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _from_label(cls, v: Any) -> Any:
        # ``synth: selfblend`` / ``none`` for the kind alone; a searched choice of mappings reaches
        # a trial as its JSON text (see space.suggest)
        if isinstance(v, str):
            text = v.strip()
            return json.loads(text) if text.startswith("{") else {"kind": text}
        return v

    @property
    def on(self) -> bool:
        return self.kind != "none" and self.p > 0


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _altered(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """The copy to paste: ``x`` (float ``3 x H x W`` on 0-255) resampled, recoloured, blurred or
    sharpened, and shifted a little."""
    h, w = x.shape[-2:]
    factor = _uniform(g, 0.5, 0.95)
    small = F.interpolate(
        x[None],
        size=(max(2, round(h * factor)), max(2, round(w * factor))),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    y = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
    shift = torch.tensor([_uniform(g, -20, 20) for _ in range(3)], device=x.device)
    contrast, brightness = _uniform(g, 0.85, 1.15), _uniform(g, -25, 25)
    mean = y.mean()
    y = (y - mean) * contrast + mean + brightness + shift.view(3, 1, 1)
    sigma = _uniform(g, 0.4, 1.5)
    blurred = TF.gaussian_blur(y, kernel_size=[_odd(3 * sigma)] * 2, sigma=[sigma, sigma])
    y = blurred if float(torch.rand((), generator=g)) < 0.5 else y + 1.0 * (y - blurred)
    limit = max(1, round(0.03 * min(h, w)))
    dy, dx = (int(torch.randint(-limit, limit + 1, (), generator=g)) for _ in range(2))
    padded = F.pad(y[None], (limit, limit, limit, limit), mode="replicate")[0]
    return padded[:, limit + dy : limit + dy + h, limit + dx : limit + dx + w].clamp(0, 255)


def _odd(v: float) -> int:
    return 2 * max(1, math.ceil(v)) + 1


def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres on [0, 1]: ``yy``, ``xx``, each ``H x W``."""
    yy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return torch.meshgrid(yy, xx, indexing="ij")


def _ellipse(h: int, w: int, g, device) -> torch.Tensor:
    yy, xx = _grid(h, w, device)
    cy, cx = _uniform(g, 0.3, 0.7), _uniform(g, 0.3, 0.7)
    a, b, angle = _uniform(g, 0.18, 0.4), _uniform(g, 0.18, 0.4), _uniform(g, 0, math.pi)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    return ((u / a) ** 2 + (v / b) ** 2 <= 1).float()


def _hull(h: int, w: int, g, device) -> torch.Tensor:
    """The convex hull of 5-10 random points in the middle of the image."""
    from scipy.spatial import ConvexHull

    n = int(torch.randint(5, 11, (), generator=g))
    points = 0.2 + 0.6 * torch.rand((n, 2), generator=g).numpy()
    equations = torch.tensor(ConvexHull(points).equations, dtype=torch.float32, device=device)
    yy, xx = _grid(h, w, device)
    pixels = torch.stack([xx, yy], dim=-1)  # H x W x 2, as the points (x, y)
    inside = pixels @ equations[:, :2].T + equations[:, 2] <= 0
    return inside.all(dim=-1).float()


def _blob(h: int, w: int, g, device) -> torch.Tensor:
    """Smooth noise (a 4-6 cell grid, bicubic), kept where it is highest, fading at the frame."""
    cells = int(torch.randint(4, 7, (), generator=g))
    noise = torch.rand((1, 1, cells, cells), generator=g).to(device)
    smooth = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
    yy, xx = _grid(h, w, device)
    smooth = smooth * torch.sin(math.pi * yy) * torch.sin(math.pi * xx)  # away from the border
    area = _uniform(g, 0.1, 0.4)
    return (smooth >= torch.quantile(smooth.flatten(), 1 - area)).float()


_SHAPES = {"ellipse": _ellipse, "hull": _hull, "blob": _blob}


def _mask(h: int, w: int, g, device, shape: str | None = None) -> torch.Tensor:
    """A soft ``H x W`` mask in [0, 1]: a random shape, feathered and scaled by a blend ratio;
    weights too small to change a pixel are exactly 0."""
    shape = shape or MASK_SHAPES[int(torch.randint(len(MASK_SHAPES), (), generator=g))]
    hard = _SHAPES[shape](h, w, g, device)
    sigma = _uniform(g, 0.5, max(0.6, 0.06 * min(h, w)))
    soft = TF.gaussian_blur(hard[None], kernel_size=[_odd(3 * sigma)] * 2, sigma=[sigma, sigma])[0]
    soft = soft / soft.max().clamp_min(1e-6)
    soft = soft * _RATIOS[int(torch.randint(len(_RATIOS), (), generator=g))]
    return torch.where(soft < _CUT, torch.zeros_like(soft), soft)


def self_blend(
    image: torch.Tensor, generator: torch.Generator | None = None, shape: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A self-blended fake of one uint8 ``3 x H x W`` image, and the mask it was blended through
    (``H x W`` in [0, 1]; where it is 0 the fake equals ``image``)."""
    x = image.float()
    mask = _mask(x.shape[-2], x.shape[-1], generator, x.device, shape)
    blended = x + mask * (_altered(x, generator) - x)
    return blended.round().clamp(0, 255).to(torch.uint8), mask


class SelfBlender:
    """Turns a share ``p`` of a batch's real images into self-blended fakes (target 1)."""

    def __init__(self, settings: SynthSettings):
        self.p = settings.p

    def one(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image and its target, from a DataLoader worker (its seeded global generator)."""
        if int(target) == 0 and float(torch.rand(())) < self.p:
            return self_blend(image)[0], torch.ones_like(target)
        return image, target

    def __call__(
        self, batch: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, targets)`` with the chosen real images replaced (new tensors; uint8 batch)."""
        chosen = (targets == 0) & (torch.rand(len(targets), generator=generator) < self.p)
        if not chosen.any():
            return batch, targets
        batch, targets = batch.clone(), targets.clone()
        for i in torch.nonzero(chosen).flatten().tolist():
            batch[i] = self_blend(batch[i], generator)[0]
            targets[i] = 1
        return batch, targets
