"""Named augmentation sets, one registry.

Every transform works on a uint8 ``C x H x W`` tensor already resized to the trial's ``img_size``
(torchvision v2 transforms accept tensors), so the data pipeline can decode once and augment many
times. Each built-in set is registered once, with :func:`register_augment`, holding its per-image
torchvision form and, when it has them, its batched forms: :class:`BatchFlips` (flips drawn per
image over a whole batch) and a kornia form that augments whole batches on the device
(:class:`DeviceAugment`). The listing (:func:`augment_names`), the name checks and their
did-you-mean errors all read that registry.

A set's name in YAML is a registry key (``flips``, ``randaugment``...), a timm auto-augment string
(``rand-m9-mstd0.5-inc1``, ``augmix-m5-w4-d2``, ``original-mstd0.5``), a set defined under
``augment_sets:`` in the same file, or several of these joined by ``+`` (``flips+jpeg``). User sets
are lists of transform specs::

    augment_sets:
      mine:
        - {name: RandomHorizontalFlip, p: 0.5}
        - {name: ColorJitter, brightness: 0.2, apply_p: 0.8}
        - {name: rand-m7-mstd0.5}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torchvision.transforms import v2

from ffdi_tune.errors import did_you_mean

__all__ = [
    "AugmentParams",
    "AugmentSet",
    "BatchFlips",
    "DeviceAugment",
    "TimmAutoAugment",
    "augment_names",
    "augment_set",
    "batch_augment",
    "build_augment",
    "check_augment_name",
    "check_augment_sets",
    "device_augment",
    "has_device_form",
    "register_augment",
]

_TIMM_AA = re.compile(r"^(rand|augmix|original|originalr|v0|v0r|3a)(-[A-Za-z0-9.]+)*$")


def _p(t: torch.nn.Module, p: float) -> torch.nn.Module:
    return v2.RandomApply([t], p=p)


@dataclass(frozen=True)
class AugmentParams:
    """Searchable strengths of the parametrised sets (the trial's ``jpeg_quality``, ``jpeg_p``)."""

    jpeg_quality: tuple[int, int] = (30, 95)  # JPEG quality range, both ends included
    jpeg_p: float = 0.5  # share of images the jpeg set re-compresses


@dataclass(frozen=True)
class BatchFlips:
    """Random flips drawn per image, applied to a whole uint8 batch (``B x C x H x W``).

    The loader can apply them for free while it gathers a batch on the CPU (numpy views), or
    :meth:`__call__` applies them on the device; both draw the same distribution as the per-image
    ``RandomHorizontalFlip`` / ``RandomVerticalFlip``.
    """

    hflip: float = 0.0
    vflip: float = 0.0

    def then(self, other: BatchFlips) -> BatchFlips:
        """Both sets in a row: an image ends flipped when exactly one of them flipped it."""
        odd = lambda p, q: p + q - 2 * p * q  # noqa: E731
        return BatchFlips(odd(self.hflip, other.hflip), odd(self.vflip, other.vflip))

    def draw(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(2, n, generator=generator)
        return u[0] < self.hflip, u[1] < self.vflip

    def __call__(
        self, batch: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if generator is None:  # drawn where the batch is: no host-to-device copy in the step
            u = torch.rand(2, len(batch), 1, 1, 1, device=batch.device)
            flip_h, flip_v = u[0] < self.hflip, u[1] < self.vflip
        else:
            flip_h, flip_v = (
                m.to(batch.device).view(-1, 1, 1, 1) for m in self.draw(len(batch), generator)
            )
        if self.hflip:
            batch = torch.where(flip_h, batch.flip(-1), batch)
        if self.vflip:
            batch = torch.where(flip_v, batch.flip(-2), batch)
        return batch


# (img_size, params) -> torchvision transforms applied in order to one uint8 CHW tensor
PerImageFactory = Callable[[int, AugmentParams], list[torch.nn.Module]]
# (kornia.augmentation, img_size) -> kornia transforms applied in order to a float BCHW batch in
# [0, 1]; kornia is handed in, so that it is imported only when a device form is built
DeviceFactory = Callable[[ModuleType, int], list[torch.nn.Module]]


@dataclass(frozen=True)
class AugmentSet:
    """One registered set: its per-image form and, when it has them, its batched forms.

    The batched forms mirror the per-image one: same operations, ranges and odds, drawn per image
    (``tests/data/test_augment.py`` compares what they do to the same images).
    """

    name: str
    per_image: PerImageFactory
    batched: BatchFlips | None = None  # flips only: applied while a batch is gathered, or on device
    on_device: DeviceFactory | None = None  # kornia, for :class:`DeviceAugment`


_AUGMENT_REGISTRY: dict[str, AugmentSet] = {}


def register_augment(
    name: str, *, batched: BatchFlips | None = None, on_device: DeviceFactory | None = None
) -> Callable[[PerImageFactory], PerImageFactory]:
    """Register the decorated per-image factory as set ``name``, with its batched forms if any.

    >>> @register_augment("vflip", batched=BatchFlips(vflip=0.5))  # doctest: +SKIP
    ... def _vflip(size, params):
    ...     return [v2.RandomVerticalFlip()]
    """

    def register(per_image: PerImageFactory) -> PerImageFactory:
        if name in _AUGMENT_REGISTRY:
            raise ValueError(f"augmentation set {name!r} is registered twice")
        _AUGMENT_REGISTRY[name] = AugmentSet(name, per_image, batched, on_device)
        return per_image

    return register


# -- the built-in sets --------------------------------------------------------------------------
# Sets without a kornia form always run image by image in the loader: autoaugment, randaugment and
# trivialaugment (kornia draws one sub-policy per call, not per image, and its randaugment /
# trivialaugment use other operations and magnitudes than torchvision's), augmix, jpeg (a real
# JPEG codec); so do timm strings and user-defined sets. The kornia forms work on float batches in
# [0, 1]. One difference: kornia's ColorJitter shuffles the order of its four steps once per batch,
# torchvision once per image; the strengths are still drawn per image.


def _kornia_jitter(K: ModuleType) -> torch.nn.Module:
    return K.ColorJitter(0.3, 0.3, 0.3, 0.03, p=0.8)


def _kornia_crop(K: ModuleType, size: int) -> torch.nn.Module:
    # torchvision resizes with align_corners=False; kornia's default is True
    return K.RandomResizedCrop((size, size), scale=(0.6, 1.0), align_corners=False)


@register_augment("none", batched=BatchFlips(), on_device=lambda K, size: [])
def _none(size, params):
    return []


@register_augment(
    "hflip", batched=BatchFlips(hflip=0.5), on_device=lambda K, size: [K.RandomHorizontalFlip()]
)
def _hflip(size, params):
    return [v2.RandomHorizontalFlip()]


@register_augment(
    "flips",
    batched=BatchFlips(hflip=0.5, vflip=0.5),
    on_device=lambda K, size: [K.RandomHorizontalFlip(), K.RandomVerticalFlip()],
)
def _flips(size, params):
    return [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]


@register_augment("crop", on_device=lambda K, size: [_kornia_crop(K, size)])
def _crop(size, params):
    return [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)]


@register_augment(
    "rotate", on_device=lambda K, size: [K.RandomRotation(15.0, resample="nearest", p=1.0)]
)
def _rotate(size, params):
    return [v2.RandomRotation(15)]


@register_augment(
    "affine",
    on_device=lambda K, size: [
        K.RandomAffine(
            10.0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5.0, resample="nearest", p=1.0
        )
    ],
)
def _affine(size, params):
    return [v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5)]


@register_augment("perspective", on_device=lambda K, size: [K.RandomPerspective(0.2, p=0.5)])
def _perspective(size, params):
    return [v2.RandomPerspective(distortion_scale=0.2, p=0.5)]


def _kornia_geometric(K: ModuleType, size: int) -> list[torch.nn.Module]:
    return [
        _kornia_crop(K, size),
        K.RandomHorizontalFlip(),
        K.RandomAffine(10.0, translate=(0.05, 0.05), shear=5.0, resample="nearest", p=0.5),
        K.RandomPerspective(0.15, p=0.3),
    ]


@register_augment("geometric", on_device=_kornia_geometric)
def _geometric(size, params):
    return [
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        _p(v2.RandomAffine(degrees=10, translate=(0.05, 0.05), shear=5), 0.5),
        v2.RandomPerspective(distortion_scale=0.15, p=0.3),
    ]


@register_augment("color", on_device=lambda K, size: [_kornia_jitter(K), K.RandomHorizontalFlip()])
def _color(size, params):
    return [_p(v2.ColorJitter(0.3, 0.3, 0.3, 0.03), 0.8), v2.RandomHorizontalFlip()]


@register_augment("grayscale", on_device=lambda K, size: [K.RandomGrayscale(p=0.2)])
def _grayscale(size, params):
    return [v2.RandomGrayscale(p=0.2)]


@register_augment("blur", on_device=lambda K, size: [K.RandomGaussianBlur(5, (0.1, 1.5), p=0.3)])
def _blur(size, params):
    return [_p(v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5)), 0.3)]


@register_augment("invert", on_device=lambda K, size: [K.RandomInvert(p=0.2)])
def _invert(size, params):
    return [v2.RandomInvert(p=0.2)]


@register_augment(
    "posterize", on_device=lambda K, size: [K.RandomPosterize(bits=(4.0, 4.0), p=0.2)]
)
def _posterize(size, params):
    return [v2.RandomPosterize(bits=4, p=0.2)]


@register_augment(
    "solarize",
    on_device=lambda K, size: [
        K.RandomSolarize(thresholds=(192 / 255, 192 / 255), additions=(0.0, 0.0), p=0.2)
    ],
)
def _solarize(size, params):
    return [v2.RandomSolarize(threshold=192, p=0.2)]


@register_augment(
    "sharpness", on_device=lambda K, size: [K.RandomSharpness(sharpness=(2.0, 2.0), p=0.3)]
)
def _sharpness(size, params):
    return [v2.RandomAdjustSharpness(sharpness_factor=2, p=0.3)]


@register_augment("equalize", on_device=lambda K, size: [K.RandomEqualize(p=0.2)])
def _equalize(size, params):
    return [v2.RandomEqualize(p=0.2)]


@register_augment("autocontrast", on_device=lambda K, size: [K.RandomAutoContrast(p=0.3)])
def _autocontrast(size, params):
    return [v2.RandomAutocontrast(p=0.3)]


def _kornia_photometric(K: ModuleType, size: int) -> list[torch.nn.Module]:
    return [
        _kornia_jitter(K),
        K.RandomGrayscale(p=0.1),
        K.RandomGaussianBlur(5, (0.1, 1.5), p=0.2),
        K.RandomSharpness(sharpness=(2.0, 2.0), p=0.2),
        K.RandomAutoContrast(p=0.2),
        K.RandomHorizontalFlip(),
    ]


@register_augment("photometric", on_device=_kornia_photometric)
def _photometric(size, params):
    return [
        _p(v2.ColorJitter(0.3, 0.3, 0.3, 0.03), 0.8),
        v2.RandomGrayscale(p=0.1),
        _p(v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5)), 0.2),
        v2.RandomAdjustSharpness(sharpness_factor=2, p=0.2),
        v2.RandomAutocontrast(p=0.2),
        v2.RandomHorizontalFlip(),
    ]


@register_augment("autoaugment")
def _autoaugment(size, params):
    return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET), v2.RandomHorizontalFlip()]


@register_augment("randaugment")
def _randaugment(size, params):
    return [v2.RandAugment(num_ops=2, magnitude=9), v2.RandomHorizontalFlip()]


@register_augment("trivialaugment")
def _trivialaugment(size, params):
    return [v2.TrivialAugmentWide(), v2.RandomHorizontalFlip()]


@register_augment("augmix")
def _augmix(size, params):
    return [v2.AugMix(), v2.RandomHorizontalFlip()]


@register_augment("jpeg")
def _jpeg(size, params):
    return [_p(v2.JPEG(quality=params.jpeg_quality), params.jpeg_p), v2.RandomHorizontalFlip()]


# -- looking sets up ----------------------------------------------------------------------------


def augment_names(user_sets: dict[str, list[dict]] | None = None) -> list[str]:
    """The registered sets, then the user's (``augment_sets``), each group sorted."""
    return sorted(_AUGMENT_REGISTRY) + sorted(user_sets or {})


def _unknown_set(name: str, user_sets: dict[str, list[dict]] | None = None) -> ValueError:
    valid = augment_names(user_sets)
    return ValueError(
        f"unknown augmentation set {name!r}{did_you_mean(name, valid)}; valid sets are "
        f"{', '.join(valid)}, a timm string like 'rand-m9-mstd0.5-inc1', or a set under "
        "augment_sets"
    )


def augment_set(name: str) -> AugmentSet:
    """The registered set ``name`` (one part, no ``+``); ValueError naming close ones if none."""
    if name not in _AUGMENT_REGISTRY:
        raise _unknown_set(name)
    return _AUGMENT_REGISTRY[name]


def batch_augment(name: str) -> BatchFlips | None:
    """The batched flips of set ``name`` (or ``a+b``), or None when a part has none."""
    parts = [_AUGMENT_REGISTRY.get(part) for part in name.split("+")]
    if not all(part is not None and part.batched is not None for part in parts):
        return None
    flips = BatchFlips()
    for part in parts:
        flips = flips.then(part.batched)
    return flips


class DeviceAugment(torch.nn.Module):
    """A set's kornia form: uint8 ``B x C x H x W`` on any device -> float on the 0-255 scale.

    Runs where the batch is (a GPU in a search), so the loader only gathers cached uint8 images. The
    output is rounded to whole values like the uint8 images of the per-image path and of validation,
    but stays float; :func:`ffdi_tune.data.loaders.to_model_input` normalises it like uint8.
    """

    def __init__(self, name: str, img_size: int):
        super().__init__()
        import kornia.augmentation as K

        forms = [augment_set(part).on_device for part in name.split("+")]
        if None in forms:
            raise ValueError(f"augmentation set {name!r} has no device form")
        self.name = name
        self.ops = torch.nn.Sequential(*(op for form in forms for op in form(K, img_size)))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.ops(batch.float() / 255)  # a new tensor: the caller's batch is left as it was
        return x.clamp_(0, 1).mul_(255).round_()

    def extra_repr(self) -> str:
        return repr(self.name)


def has_device_form(name: str, user_sets: dict[str, list[dict]] | None = None) -> bool:
    """Whether every part of set ``name`` (or ``a+b``) has a kornia device form."""
    return all(
        part not in (user_sets or {})
        and part in _AUGMENT_REGISTRY
        and _AUGMENT_REGISTRY[part].on_device is not None
        for part in name.split("+")
    )


def device_augment(
    name: str, img_size: int, user_sets: dict[str, list[dict]] | None = None
) -> DeviceAugment | None:
    """The kornia device form of set ``name`` (or ``a+b``), or None when a part has none."""
    return DeviceAugment(name, img_size) if has_device_form(name, user_sets) else None


# -- timm auto-augment strings ------------------------------------------------------------------


def _posterize_zero_ok(img, bits_to_keep, **kwargs):
    """timm's posterize, keeping its meaning for 0 bits (a black image) under Pillow >= 12.

    At high magnitudes (e.g. ``rand-m9-mstd0.5-inc1`` drawing 10) timm asks to keep 0 bits; older
    Pillow returned black, current Pillow raises ValueError, which would crash a trial at random.
    """
    from PIL import Image
    from timm.data.auto_augment import posterize

    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep, **kwargs)


def _patch_posterize(transform) -> None:
    """Point every posterize op of a timm auto-augment transform at :func:`_posterize_zero_ok`."""
    from timm.data.auto_augment import posterize

    stack = [transform]
    while stack:
        obj = stack.pop()
        if getattr(obj, "aug_fn", None) is posterize:
            obj.aug_fn = _posterize_zero_ok
        for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
            if isinstance(value, (list, tuple)):
                stack.extend(value)
        if isinstance(obj, (list, tuple)):
            stack.extend(obj)


class TimmAutoAugment(torch.nn.Module):
    """timm's auto-augment strings (PIL-only ops) applied to a uint8 tensor."""

    def __init__(self, config_str: str, img_size: int):
        super().__init__()
        from timm.data.auto_augment import (
            augment_and_mix_transform,
            auto_augment_transform,
            rand_augment_transform,
        )

        hparams = {"translate_const": int(img_size * 0.45), "img_mean": (124, 116, 104)}
        if config_str.startswith("rand"):
            self.transform = rand_augment_transform(config_str, hparams)
        elif config_str.startswith("augmix"):
            self.transform = augment_and_mix_transform(config_str, hparams)
        else:
            self.transform = auto_augment_transform(config_str, hparams)
        _patch_posterize(self.transform)
        self.config_str = config_str

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        pil = v2.functional.to_pil_image(img)
        return v2.functional.pil_to_tensor(self.transform(pil))

    def extra_repr(self) -> str:
        return repr(self.config_str)


# -- user-defined sets and building a set -------------------------------------------------------


def _torchvision_transform(name: str) -> type[v2.Transform]:
    """The torchvision.transforms.v2 class called ``name``; ValueError naming close ones if none."""
    cls = getattr(v2, name, None)
    if isinstance(cls, type) and issubclass(cls, v2.Transform):
        return cls
    transforms = [
        n
        for n in dir(v2)
        if isinstance(getattr(v2, n), type) and issubclass(getattr(v2, n), v2.Transform)
    ]
    raise ValueError(
        f"unknown transform {name!r}{did_you_mean(name, transforms + list(_AUGMENT_REGISTRY))}; "
        "use a torchvision.transforms.v2 class name, a named set or a timm auto-augment string"
    )


def _from_spec(
    spec: dict[str, Any],
    img_size: int,
    user_sets: dict[str, list[dict]],
    params: AugmentParams = AugmentParams(),
) -> list[torch.nn.Module]:
    """The transforms of one entry of a user set: a named set, a timm string or a v2 class."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"each transform spec needs a 'name', but got {spec!r}")
    apply_p = spec.pop("apply_p", None)
    if name in _AUGMENT_REGISTRY or _TIMM_AA.match(name):
        if spec:
            raise ValueError(f"set {name!r} takes no arguments, but got {sorted(spec)}")
        ops = build_augment(name, img_size, user_sets, params=params).transforms
    else:
        cls = _torchvision_transform(name)
        try:
            ops = [cls(**spec)]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"transform {name}: {exc}") from None
    if apply_p is not None:
        ops = [_p(v2.Compose(ops or [v2.Identity()]), float(apply_p))]
    return ops


def check_augment_name(name: str, user_sets: dict[str, list[dict]] | None = None) -> None:
    """Raise ValueError naming the valid sets unless ``name`` is a known set (or ``a+b``)."""
    for part in name.split("+"):
        if part in _AUGMENT_REGISTRY or part in (user_sets or {}):
            continue
        if _TIMM_AA.match(part):
            try:
                TimmAutoAugment(part, 64)
            except Exception as exc:  # timm raises assorted errors on bad strings
                raise ValueError(f"timm auto-augment string {part!r} is invalid: {exc}") from None
            continue
        raise _unknown_set(part, user_sets)


def check_augment_sets(user_sets: dict[str, list[dict]], img_size: int) -> None:
    """Build every user-defined set once so that a bad spec fails at load time."""
    for name, specs in user_sets.items():
        if name in _AUGMENT_REGISTRY:
            raise ValueError(f"augment_sets.{name}: {name!r} is a built-in set; pick another name")
        try:
            for spec in specs:
                if not isinstance(spec, dict):
                    raise ValueError(
                        f"each entry must be a mapping like {{name: RandomHorizontalFlip}}, got "
                        f"{spec!r}"
                    )
                _from_spec(spec, img_size, {k: v for k, v in user_sets.items() if k != name})
        except ValueError as exc:
            raise ValueError(f"augment_sets.{name}: {exc}") from None


def build_augment(
    name: str,
    img_size: int,
    user_sets: dict[str, list[dict]] | None = None,
    *,
    params: AugmentParams = AugmentParams(),
) -> v2.Compose:
    """The train-time transform of a named set, for uint8 CHW tensors of side ``img_size``.

    ``params`` sets the strengths of the parametrised sets (``jpeg``), also inside user sets.

    >>> t = build_augment("flips+jpeg", 64)
    >>> t(torch.zeros(3, 64, 64, dtype=torch.uint8)).shape
    torch.Size([3, 64, 64])
    """
    user_sets = user_sets or {}
    check_augment_name(name, user_sets)
    ops: list[torch.nn.Module] = []
    for part in name.split("+"):
        if part in _AUGMENT_REGISTRY:
            ops.extend(_AUGMENT_REGISTRY[part].per_image(img_size, params))
        elif part in user_sets:
            other_sets = {k: v for k, v in user_sets.items() if k != part}
            for spec in user_sets[part]:
                ops.extend(_from_spec(spec, img_size, other_sets, params))
        else:
            ops.append(TimmAutoAugment(part, img_size))
    return v2.Compose(ops or [v2.Identity()])
