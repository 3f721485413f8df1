"""Where a trial's augmentation runs: on the device, while a batch is gathered, or image by image.

:func:`augment_placement` makes the choice (the trainer, the search's MLflow tag and the GPU bench
all ask it), :func:`augmenters` builds the set for that place, and :func:`loader_workers` says how
many DataLoader processes the per-image path gets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from ffdi_tune.data.augment import (
    AugmentParams,
    BatchFlips,
    batch_augment,
    build_augment,
    device_augment,
    has_device_form,
)
from ffdi_tune.training.settings import TrainSettings

__all__ = ["augment_placement", "Augmenters", "augmenters", "loader_workers"]


def augment_placement(
    settings: TrainSettings, augment_sets: dict[str, list[dict]] | None, device: torch.device
) -> Literal["device", "gather", "loader"]:
    """Where the trial's augmentation set runs.

    ``device``: whole batches on the training device (the flips sets on a GPU; sets with a kornia
    form when ``device_augment`` allows). ``gather``: the flips sets on a CPU, drawn per image as
    a batch is gathered from the decode cache. ``loader``: torchvision, image by image, in the
    DataLoader's workers when ``data.num_workers`` asks for them.
    """
    names_a_user_set = any(part in (augment_sets or {}) for part in settings.augment.split("+"))
    if not names_a_user_set and batch_augment(settings.augment) is not None:
        return "device" if device.type != "cpu" else "gather"
    wants_device = settings.device_augment == "on" or (
        settings.device_augment == "auto" and device.type == "cuda"
    )
    return (
        "device" if wants_device and has_device_form(settings.augment, augment_sets) else "loader"
    )


def loader_workers(num_workers: int | str, where: str, device: torch.device) -> int:
    """DataLoader processes for the per-image path (``where == "loader"``), else none.

    ``auto``: on a GPU trial all but one of the CPU threads the trial has (the search gives each
    trial as many as its ``resources.cpu``), so augmentation keeps up with the GPU; on a CPU trial
    none, since worker processes would take cores from the model.
    """
    if where != "loader":
        return 0
    if num_workers != "auto":
        return int(num_workers)
    return max(1, torch.get_num_threads() - 1) if device.type == "cuda" else 0


class Augmenters(NamedTuple):
    """The trial's augmentation in the place :func:`augment_placement` chose (the others None)."""

    where: str
    on_device: Callable[[torch.Tensor], torch.Tensor] | None
    while_gathering: BatchFlips | None
    per_image: Callable[[torch.Tensor], torch.Tensor] | None


def augmenters(
    settings: TrainSettings, augment_sets: dict[str, list[dict]] | None, device: torch.device
) -> Augmenters:
    """The trial's set, built for the place :func:`augment_placement` picks."""
    where = augment_placement(settings, augment_sets, device)
    flips = batch_augment(settings.augment)
    if where == "gather":
        return Augmenters(where, None, flips, None)
    if where == "device":
        if flips is not None:
            return Augmenters(where, flips, None, None)
        return Augmenters(
            where, device_augment(settings.augment, settings.img_size).to(device), None, None
        )
    params = AugmentParams(jpeg_quality=settings.jpeg_quality, jpeg_p=settings.jpeg_p)
    return Augmenters(
        where,
        None,
        None,
        build_augment(settings.augment, settings.img_size, augment_sets, params=params),
    )
