"""Batches of decoded images for training and prediction, and their normalisation on the device.

- :func:`train_batches` -> one epoch of shuffled uint8 batches with their targets, flipped while
  gathered, augmented image by image (inline or in DataLoader workers), or left for the device;
- :func:`eval_loader` -> plain in-order uint8 batches (views, no copies);
- :func:`to_model_input` -> float, normalised, on the device (normalisation happens there, as in
  timm's PrefetchLoader, so the loader moves 4x fewer bytes).

The images are the uint8 ``N x 3 x S x S`` tensors :func:`ffdi_tune.data.layout.load_images`
returns (often views of the memory-mapped decode cache).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["train_batches", "eval_loader", "to_model_input"]


class _AugmentedImages(Dataset):
    """The decoded images with their targets, each image cut to a random ``crop`` square (when
    given), through ``synth`` (which may make it a fake) and then ``transform`` when read."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray, transform, synth=None, crop=None):
        self.images, self.targets, self.transform = images, torch.tensor(targets), transform
        self.synth, self.crop = synth, crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image, target = self.images[i], self.targets[i]
        if self.crop is not None:  # the worker's own seeded generator draws the corner
            top, left = _corners(1, image.shape[-1], self.crop, None)
            image = image[:, top[0] : top[0] + self.crop, left[0] : left[0] + self.crop]
        if self.synth is not None:
            image, target = self.synth.one(image, target)
        return self.transform(image), target


def _corners(n: int, side: int, crop: int, generator) -> tuple[list[int], list[int]]:
    """Top and left corners of ``n`` random ``crop`` squares in a ``side`` square."""
    top = torch.randint(0, side - crop + 1, (n,), generator=generator)
    left = torch.randint(0, side - crop + 1, (n,), generator=generator)
    return top.tolist(), left.tolist()


def _gather(
    images: torch.Tensor,
    idx: torch.Tensor,
    hflip: torch.Tensor,
    vflip: torch.Tensor,
    crops: tuple[list[int], list[int], int] | None = None,
) -> torch.Tensor:
    """Copy images ``idx`` into a new NCHW batch, cut to ``crops`` (tops, lefts, side) and flipped
    on the way (numpy views: one pass, no resize)."""
    nhwc = images.permute(0, 2, 3, 1).numpy()  # the decoded (often memory-mapped) array itself
    side = crops[2] if crops else nhwc.shape[1]
    out = np.empty((len(idx), 3, side, side), dtype=np.uint8)
    for j, (i, h, v) in enumerate(zip(idx.tolist(), hflip.tolist(), vflip.tolist(), strict=True)):
        src = nhwc[i]
        if crops is not None:
            top, left = crops[0][j], crops[1][j]
            src = src[top : top + side, left : left + side]
        if v:
            src = src[::-1]
        if h:
            src = src[:, ::-1]
        out[j] = src.transpose(2, 0, 1)
    return torch.from_numpy(out)


def train_batches(
    images: torch.Tensor,
    targets: np.ndarray,
    batch_size: int,
    generator: torch.Generator,
    sample_transform=None,
    flips=None,
    num_workers: int = 0,
    pin_memory: bool = False,
    synth=None,
    crop: int | None = None,
):
    """One epoch of shuffled uint8 batches ``(images, targets)``; the last short batch is dropped.

    ``crop`` cuts a random ``crop`` square out of every image (``resize: crop``: the images are the
    cache's larger squares), drawn with ``generator`` (in workers, the worker's seeded one).

    ``flips`` (a :class:`~ffdi_tune.data.augment.BatchFlips`) are applied while the batch is
    gathered. A per-image ``sample_transform`` runs in ``num_workers`` DataLoader processes when
    asked, else inline. With neither, a batch is one gather from the decoded array (augment it on
    the device). ``synth`` (a :class:`~ffdi_tune.data.synth.SelfBlender`) turns some real images
    into fakes before any per-image transform, with the same ``generator`` (in workers, with the
    worker's seeded one).
    """
    batch_size = min(batch_size, len(images))
    if sample_transform is not None and num_workers > 0:
        yield from DataLoader(
            _AugmentedImages(images, targets, sample_transform, synth, crop),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        return
    all_targets = torch.tensor(targets)
    order = torch.randperm(len(images), generator=generator)
    no_flip = torch.zeros(batch_size, dtype=torch.bool)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        hflip, vflip = (no_flip, no_flip) if flips is None else flips.draw(batch_size, generator)
        crops = (*_corners(batch_size, images.shape[-1], crop, generator), crop) if crop else None
        batch, batch_targets = _gather(images, idx, hflip, vflip, crops), all_targets[idx]
        if synth is not None:
            batch, batch_targets = synth(batch, batch_targets, generator)
        if sample_transform is not None:
            batch = torch.stack([sample_transform(img) for img in batch])
        yield (batch.pin_memory() if pin_memory else batch), batch_targets


def eval_loader(images: torch.Tensor, batch_size: int):
    """Plain in-order batches of the decoded images (no copies, no workers needed)."""
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def to_model_input(
    batch: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
) -> torch.Tensor:
    """``B x 3 x H x W`` on the 0-255 scale (uint8, or float from a device augmentation) ->
    normalised float on ``device``."""
    # (x / 255 - mean) / std as two in-place passes over the batch
    x = batch.to(device, non_blocking=True).float()
    x = x.sub_((mean * 255).view(1, 3, 1, 1)).mul_((1 / (std * 255)).view(1, 3, 1, 1))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
