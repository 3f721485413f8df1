"""Fixed, seeded per-image perturbations: the robust copy of valset behind ``val_robust_auc``.

Detectors that score 0.99 on a clean validation split often fail on images that were re-saved,
resized or filtered on their way to the test set. :class:`Perturber` applies one or two of the
kinds below to each image, with parameters drawn from a generator seeded by the recipe's seed and
the image's name, so every trial (and every ensemble member) is scored on the very same pixels:

- ``crop``: keep a window of 85-97 % of each side, resized back to ``img_size``;
- ``rescale``: shrink, then scale back up (detail lost to a thumbnail round trip);
- ``color``: gamma and per-channel gain (another camera, another white balance);
- ``blur``: Gaussian blur;
- ``jpeg``: JPEG re-compression at quality 30-70 (platforms re-encode uploads).

Kinds are applied in that order (a re-encode comes last, as on upload), to the image as the model
sees it: decoded and resized to the trial's ``img_size`` exactly as the clean copy, so strengths are
relative to that size and ``val_robust_auc - val_auc`` measures the perturbation alone. A
``resize: crop`` trial's copy is perturbed on the file's full-resolution pixels instead, before
they are brought to its cache side, as a re-upload would be (strengths then relative to the file's
size: a search mixing squash and crop ranks them on differently perturbed copies). Ranges and
the on/off switch of each kind come from :class:`RobustValConfig` (``robust_val:`` in a search's
YAML).

>>> p = Perturber(RobustValConfig(seed=1))
>>> [kind for kind, _ in p.plan("0001.jpg")]  # doctest: +SKIP
['color', 'jpeg']
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from pydantic import model_validator

from ffdi_tune.strict import StrictModel, range_validator

__all__ = ["PERTURB_KINDS", "PerturbKinds", "RobustValConfig", "Perturber"]

# Application order; also the names under robust_val.kinds.
PERTURB_KINDS = ("crop", "rescale", "color", "blur", "jpeg")


class JpegPerturb(StrictModel):
    """Re-encode as JPEG at a quality drawn from ``quality`` (both ends included)."""

    quality: tuple[int, int] = (30, 70)

    _range = range_validator("quality", 1, 100)


class BlurPerturb(StrictModel):
    """Gaussian blur with sigma (in pixels at the trial's img_size) drawn from ``sigma``."""

    sigma: tuple[float, float] = (0.5, 1.5)

    _range = range_validator("sigma", 0.01, 20)


class RescalePerturb(StrictModel):
    """Shrink each side to ``factor`` of its length (drawn), then scale back up."""

    factor: tuple[float, float] = (0.4, 0.7)

    _range = range_validator("factor", 0.05, 1)


class ColorPerturb(StrictModel):
    """Gamma drawn from ``gamma`` and a gain per channel drawn from ``gain``."""

    gamma: tuple[float, float] = (0.8, 1.25)
    gain: tuple[float, float] = (0.92, 1.08)

    _gamma = range_validator("gamma", 0.1, 10)
    _gain = range_validator("gain", 0.1, 10)


class CropPerturb(StrictModel):
    """A window of ``keep`` (drawn) of each side, at a random place, resized back to img_size."""

    keep: tuple[float, float] = (0.85, 0.97)

    _range = range_validator("keep", 0.3, 1)


class PerturbKinds(StrictModel):
    """The perturbation kinds of the robust valset and their ranges; ``null`` turns a kind off."""

    jpeg: JpegPerturb | None = JpegPerturb()
    blur: BlurPerturb | None = BlurPerturb()
    rescale: RescalePerturb | None = RescalePerturb()
    color: ColorPerturb | None = ColorPerturb()
    crop: CropPerturb | None = CropPerturb()

    def enabled(self) -> list[str]:
        """Names of the kinds that are on, in field order."""
        return [k for k in type(self).model_fields if getattr(self, k) is not None]


class RobustValConfig(StrictModel):
    """A perturbed copy of valset, the same for every trial, scored as ``val_robust_auc``.

    Each image gets ``ops_per_image`` (drawn from ``[low, high]``) of the enabled kinds, with
    parameters drawn from a generator seeded by ``seed`` and the image's name.
    """

    enabled: bool = True
    seed: int = 0
    ops_per_image: tuple[int, int] = (1, 2)
    kinds: PerturbKinds = PerturbKinds()

    _ops = range_validator("ops_per_image", 1, 10)

    @model_validator(mode="after")
    def _some_kind(self) -> RobustValConfig:
        if not self.kinds.enabled():
            raise ValueError(
                "kinds turns every perturbation off; keep at least one or set enabled: false"
            )
        return self


# Bump when what a plan does to an image changes, so cached perturbed arrays are rebuilt.
PERTURB_POLICY = "perturb-v2"  # v2: applied after the resize to img_size (squash)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _draw(kind: str, cfg: Any, rng: np.random.Generator) -> dict[str, Any]:
    """The parameters of one application of ``kind`` (placement as fractions: size-independent)."""
    if kind == "crop":
        return {"keep": _uniform(rng, cfg.keep), "x": float(rng.random()), "y": float(rng.random())}
    if kind == "rescale":
        return {"factor": _uniform(rng, cfg.factor)}
    if kind == "color":
        return {
            "gamma": _uniform(rng, cfg.gamma),
            "gain": [_uniform(rng, cfg.gain) for _ in range(3)],
        }
    if kind == "blur":
        return {"sigma": _uniform(rng, cfg.sigma)}
    if kind == "jpeg":
        return {"quality": int(rng.integers(cfg.quality[0], cfg.quality[1] + 1))}
    raise ValueError(
        f"unknown perturbation kind {kind!r}; valid kinds are {', '.join(PERTURB_KINDS)}"
    )


def _apply(kind: str, p: dict[str, Any], im: Image.Image) -> Image.Image:
    w, h = im.size
    if kind == "crop":
        cw, ch = max(1, round(w * p["keep"])), max(1, round(h * p["keep"]))
        left, top = round((w - cw) * p["x"]), round((h - ch) * p["y"])
        return im.crop((left, top, left + cw, top + ch))
    if kind == "rescale":
        small = im.resize(
            (max(4, round(w * p["factor"])), max(4, round(h * p["factor"]))), Image.BILINEAR
        )
        return small.resize((w, h), Image.BICUBIC)
    if kind == "color":
        x = np.asarray(im, dtype=np.float32) / 255.0
        x = 255.0 * np.power(x, p["gamma"]) * np.asarray(p["gain"], dtype=np.float32)
        return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))
    if kind == "blur":
        return im.filter(ImageFilter.GaussianBlur(p["sigma"]))
    if kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=p["quality"])
        buf.seek(0)
        with Image.open(buf) as out:
            return out.convert("RGB")
    raise ValueError(
        f"unknown perturbation kind {kind!r}; valid kinds are {', '.join(PERTURB_KINDS)}"
    )


class Perturber:
    """``perturber(image, name)``: the image with its own fixed perturbations applied.

    Thread-safe (no shared random state): the loader calls it from several threads.
    """

    def __init__(self, recipe: RobustValConfig):
        self.recipe = recipe
        spec = recipe.model_dump(mode="json", exclude={"enabled"})
        #: what the perturbed pixels depend on besides the files: part of the decode-cache key
        self.key = (
            PERTURB_POLICY
            + ":"
            + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        )
        self._kinds = [k for k in PERTURB_KINDS if getattr(recipe.kinds, k) is not None]

    def plan(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """The kinds (in application order) and drawn parameters for the image called ``name``."""
        digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        rng = np.random.default_rng([self.recipe.seed, digest])
        low, high = self.recipe.ops_per_image
        n = min(int(rng.integers(low, high + 1)), len(self._kinds))
        chosen = set(rng.choice(len(self._kinds), size=n, replace=False).tolist())
        return [
            (k, _draw(k, getattr(self.recipe.kinds, k), rng))
            for i, k in enumerate(self._kinds)
            if i in chosen
        ]

    def __call__(self, image: Image.Image, name: str) -> Image.Image:
        out = image.convert("RGB")
        for kind, params in self.plan(name):
            out = _apply(kind, params, out)
        return out
