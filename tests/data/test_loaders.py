"""Batches from decoded JPEGs: shuffled training epochs (flipped while gathered, or augmented image
by image in DataLoader workers), in-order prediction batches, normalisation on the device."""

from __future__ import annotations

import pytest
import torch
from flip_mix import check_flip_mix
from torchvision.transforms import v2

from ffdi_tune.data.augment import batch_augment
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.loaders import eval_loader, to_model_input, train_batches
from ffdi_tune.data.settings import DataConfig


@pytest.fixture(scope="module")
def images(tiny_data):
    return load_images(read_split(DataConfig(root=str(tiny_data)), "train"), 48)


def numbered(n: int) -> torch.Tensor:
    """``n`` 4 x 4 images, image ``i`` filled with the value ``i``."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()


@pytest.mark.parametrize("name", ["hflip", "flips"])
def test_loader_applies_batched_flips_while_gathering(name, images):
    image = images[0]
    copies = image.unsqueeze(0).repeat(400, 1, 1, 1)
    batches = list(
        train_batches(
            copies,
            torch.zeros(400, dtype=torch.long).numpy(),
            400,
            torch.Generator().manual_seed(0),
            flips=batch_augment(name),
        )
    )
    check_flip_mix(name, batches[0][0], image)


def test_loader_workers_pair_each_image_with_its_target():
    """DataLoader workers (the per-image path): every image once per epoch, with its target."""
    images = numbered(20)
    targets = (torch.arange(20) % 2).numpy()
    batches = list(
        train_batches(
            images, targets, 5, torch.Generator().manual_seed(0), v2.Identity(), None, num_workers=1
        )
    )
    assert len(batches) == 4 and all(
        b.shape == (5, 3, 4, 4) and b.dtype == torch.uint8 for b, _ in batches
    )
    ids = torch.cat([b[:, 0, 0, 0] for b, _ in batches]).long()
    # every image once, shuffled
    assert sorted(ids.tolist()) == list(range(20)) and ids.tolist() != list(range(20))
    assert torch.equal(torch.cat([y for _, y in batches]), ids % 2)


def test_inline_epoch_is_shuffled_by_the_generator_and_drops_the_short_batch():
    images, targets = numbered(22), (torch.arange(22) % 3 == 0).long().numpy()

    def epoch(seed: int) -> list[int]:
        batches = list(train_batches(images, targets, 5, torch.Generator().manual_seed(seed)))
        assert [len(b) for b, _ in batches] == [5, 5, 5, 5]  # 22 = 4 x 5 + 2 left out
        ids = torch.cat([b[:, 0, 0, 0] for b, _ in batches]).long()
        assert torch.equal(torch.cat([y for _, y in batches]), (ids % 3 == 0).long())
        return ids.tolist()

    assert epoch(0) == epoch(0) and epoch(0) != epoch(1) and len(set(epoch(0))) == 20


def test_eval_batches_are_in_order_views_with_the_last_short_one(images):
    batches = list(eval_loader(images, 10))
    assert [len(b) for b in batches] == [10, 10, 10, 10, 8]
    assert torch.equal(torch.cat(batches), images)
    assert batches[1].data_ptr() == images[10].data_ptr()  # a view: nothing copied


def test_model_input_is_normalised_like_timm_for_uint8_and_device_augmented_batches(images):
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    batch = images[:8]
    x = to_model_input(batch, mean, std, torch.device("cpu"))
    expected = (batch.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x, expected, atol=1e-5)
    # a device augmentation's float output on the 0-255 scale is normalised the same way
    assert torch.equal(to_model_input(batch.float(), mean, std, torch.device("cpu")), x)
    last = to_model_input(batch, mean, std, torch.device("cpu"), channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, x)
    assert torch.equal(batch, images[:8])  # the decoded images are left as they were


@pytest.mark.parametrize("workers", [0, 1])
def test_crop_cuts_random_windows_of_the_decoded_squares_without_resizing(workers):
    """Channel 0 holds each pixel's position, channel 1 its image's number: every cut is a window
    of its own image, pixel for pixel, at a random place."""
    n, side, crop = 12, 8, 4
    position = torch.arange(side * side, dtype=torch.uint8).view(side, side)
    images = torch.stack(
        [torch.stack([position, torch.full_like(position, i), position]) for i in range(n)]
    )
    batches = list(
        train_batches(
            images, (torch.arange(n) % 2).numpy(), 6, torch.Generator().manual_seed(0),
            v2.Identity() if workers else None, None, num_workers=workers, crop=crop,
        )
    )  # fmt: skip
    corners = set()
    for batch, _ in batches:
        assert batch.shape == (6, 3, crop, crop)
        for cut in batch:
            top, left = divmod(int(cut[0, 0, 0]), side)
            source = images[int(cut[1, 0, 0])]
            assert torch.equal(cut, source[:, top : top + crop, left : left + crop])
            corners.add((top, left))
    assert len(corners) > 3  # drawn at random, not always the same window
