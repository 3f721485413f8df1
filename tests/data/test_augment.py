"""Every named augmentation set runs on a real decoded JPEG and keeps shape and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from ffdi_tune.data.augment import AUGMENT_SETS, DEVICE_SETS, build_augment
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig

NAMES = sorted(AUGMENT_SETS) + [
    "rand-m9-mstd0.5-inc1",
    "augmix-m5-w4-d2",
    "original-mstd0.5",
    "flips+jpeg",
]


@pytest.fixture(scope="module")
def image(tiny_data):
    return load_images(read_split(DataConfig(root=str(tiny_data)), "train"), 48)[0]


@pytest.mark.parametrize("name", NAMES)
def test_named_set_runs_on_real_image(name, image):
    torch.manual_seed(0)
    t = build_augment(name, 48)
    outs = [t(image) for _ in range(30)]
    for out in outs:
        assert out.shape == (3, 48, 48) and out.dtype == torch.uint8
    if name != "none":
        # a random set changes at least one of several draws
        assert any(not torch.equal(o, image) for o in outs)
    else:
        assert all(torch.equal(o, image) for o in outs)


def test_user_defined_set(image):
    sets = {
        "mine": [
            {"name": "RandomHorizontalFlip", "p": 1.0},
            {"name": "ColorJitter", "brightness": 0.5, "apply_p": 0.0},
        ]
    }
    out = build_augment("mine", 48, sets)(image)
    assert torch.equal(out, image.flip(-1))


def test_unknown_set_lists_valid_names():
    with pytest.raises(ValueError, match="valid sets are .*flips"):
        build_augment("flipz", 48)


@pytest.mark.parametrize("name", ["hflip", "flips", "flips+hflip"])
def test_batched_sets_flip_each_image_independently(name, image):
    from ffdi_tune.data.augment import batch_augment

    torch.manual_seed(0)
    batch = image.unsqueeze(0).repeat(400, 1, 1, 1)
    out = batch_augment(name)(batch)
    check_flip_mix(name, out, image)


@pytest.mark.parametrize("name", ["hflip", "flips"])
def test_loader_applies_batched_flips_while_gathering(name, image):
    from ffdi_tune.data.augment import batch_augment
    from ffdi_tune.data.layout import train_batches

    images = image.unsqueeze(0).repeat(400, 1, 1, 1)
    batches = list(
        train_batches(
            images,
            torch.zeros(400, dtype=torch.long).numpy(),
            400,
            torch.Generator().manual_seed(0),
            flips=batch_augment(name),
        )
    )
    check_flip_mix(name, batches[0][0], image)


def check_flip_mix(name, out, image):
    """Each image is the original or one of its flips, drawn independently with the set's odds."""
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


def test_sets_without_batched_form_fall_back():
    from ffdi_tune.data.augment import batch_augment

    assert batch_augment("randaugment") is None and batch_augment("flips+jpeg") is None
    assert batch_augment("none") is not None


def test_timm_posterize_at_full_magnitude_does_not_crash(image):
    """rand-...-inc1 at magnitude 10 keeps 0 bits: black, as timm meant, not Pillow's ValueError."""
    import random

    from ffdi_tune.data.augment import TimmAutoAugment

    t = TimmAutoAugment("rand-m10-n1-inc1", 48)
    posterize_op = next(op for op in t.transform.ops if op.name == "PosterizeIncreasing")
    posterize_op.prob = 1.0
    black = posterize_op(v2.functional.to_pil_image(image))
    assert not np.asarray(black).any()
    random.seed(0)
    for _ in range(300):  # every op at magnitude 10, posterize among them
        out = t(image)
        assert out.shape == image.shape


# --- batched device forms (kornia) -------------------------------------------------------------


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """512 distinct generated portraits, written as JPEG files and decoded, at 32 px."""
    from ffdi_tune.data.demo import write_demo_dataset

    root = write_demo_dataset(
        tmp_path_factory.mktemp("many") / "d", n_train=512, n_val=4, n_test=2, size=32, seed=5
    )
    return load_images(read_split(DataConfig(root=str(root)), "train"), 32)


def test_device_sets_are_a_subset_with_one_factory_each():
    from ffdi_tune.data.augment import _device_set_factories

    assert set(_device_set_factories()) == DEVICE_SETS and DEVICE_SETS <= set(AUGMENT_SETS)


def test_sets_without_device_form_fall_back():
    from ffdi_tune.data.augment import device_augment

    for name in ["jpeg", "flips+jpeg", "randaugment", "augmix", "rand-m9-mstd0.5-inc1"]:
        assert device_augment(name, 32) is None
    sets = {"mine": [{"name": "RandomHorizontalFlip"}]}
    assert (
        device_augment("mine", 32, sets) is None and device_augment("color+mine", 32, sets) is None
    )
    assert device_augment("flips+color", 32) is not None


def change_stats(out, images):
    """Share of images changed, and the mean absolute change (0-255) of those that changed."""
    diff = (out.float() - images.float()).abs().flatten(1).mean(1)
    changed = diff > 0.5
    return float(changed.float().mean()), float(diff[changed].mean()) if changed.any() else 0.0


# sets whose strengths are continuous: drawn per image, 64 copies of one image all come out
# different
CONTINUOUS = {
    "crop",
    "rotate",
    "affine",
    "perspective",
    "geometric",
    "color",
    "blur",
    "photometric",
}


@pytest.mark.parametrize("name", sorted(DEVICE_SETS - {"none"}))
def test_device_form_gives_the_same_kind_of_images(name, many_images):
    """Batched form vs torchvision image by image, on the same 512 images: about as many images
    changed, by about as much; and the random gate (and, for continuous sets, the strength) is drawn
    per image, not once for the whole batch."""
    from ffdi_tune.data.augment import device_augment

    torch.manual_seed(0)
    t = build_augment(name, 32)
    reference = torch.stack([t(img) for img in many_images])
    out = device_augment(name, 32)(many_images)
    assert out.shape == many_images.shape and out.dtype == torch.float32
    # whole values, like the uint8 images validation sees
    assert torch.equal(out, out.round())
    ref_share, ref_size = change_stats(reference, many_images)
    share, size = change_stats(out, many_images)
    assert abs(share - ref_share) < 0.1, (share, ref_share)
    assert 0.6 < size / ref_size < 1.6, (size, ref_size)
    copies = device_augment(name, 32)(many_images[:1].repeat(64, 1, 1, 1))
    distinct = len(torch.unique(copies.flatten(1), dim=0))
    changed = int((copies != many_images[:1].float()).flatten(1).any(1).sum())
    assert distinct > 1
    if ref_share < 0.95:  # a set applied with some odds leaves some copies as they were
        assert changed < 64
    if name in CONTINUOUS:  # nearly every changed copy has its own strength
        assert changed > 10 and distinct >= 0.8 * changed, (distinct, changed)
    assert torch.equal(copies, copies.round())  # whole values, like uint8 images


def test_device_form_follows_the_seed(many_images):
    from ffdi_tune.data.augment import device_augment

    t = device_augment("photometric", 32)
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(t(many_images[:64]))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_loader_workers_pair_each_image_with_its_target():
    """The per-image path in DataLoader worker processes: every image once per epoch, with its
    target."""
    from ffdi_tune.data.layout import train_batches

    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 4, 4).contiguous()
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
