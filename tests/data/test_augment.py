"""Every named augmentation set runs on a real decoded JPEG and keeps shape and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flip_mix import check_flip_mix
from torchvision.transforms import v2

from ffdi_tune.data.augment import (
    BatchFlips,
    augment_names,
    augment_set,
    batch_augment,
    build_augment,
    check_augment_name,
    device_augment,
    has_device_form,
    register_augment,
)
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig

DEVICE_NAMES = [name for name in augment_names() if has_device_form(name)]
NAMES = augment_names() + [
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
    torch.manual_seed(0)
    batch = image.unsqueeze(0).repeat(400, 1, 1, 1)
    out = batch_augment(name)(batch)
    check_flip_mix(name, out, image)


def test_sets_without_batched_form_fall_back():
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


def test_registry_lists_every_set_once_with_its_batched_forms():
    assert augment_names() == sorted(
        ["none", "hflip", "flips", "crop", "rotate", "affine", "perspective", "geometric", "color"]
        + ["grayscale", "blur", "invert", "posterize", "solarize", "sharpness", "equalize"]
        + ["autocontrast", "photometric", "autoaugment", "randaugment", "trivialaugment"]
        + ["augmix", "jpeg"]
    )
    assert augment_names({"mine": []})[-1] == "mine"  # the user's sets after the built-in ones
    # a kornia form for all but the policies, augmix and the real JPEG codec
    per_image_only = {"autoaugment", "randaugment", "trivialaugment", "augmix", "jpeg"}
    assert set(DEVICE_NAMES) == set(augment_names()) - per_image_only
    assert [n for n in augment_names() if augment_set(n).batched] == ["flips", "hflip", "none"]
    assert augment_set("flips").batched == BatchFlips(hflip=0.5, vflip=0.5)


def test_unknown_set_is_one_error_with_close_names():
    with pytest.raises(
        ValueError, match=r"unknown augmentation set 'flipz' \(did you mean 'hflip' "
    ):
        augment_set("flipz")
    with pytest.raises(
        ValueError, match=r"'photometrc' \(did you mean 'photometric' or 'geometric'\?\); valid"
    ):
        check_augment_name("flips+photometrc")
    with pytest.raises(ValueError, match="'mien' .*did you mean 'mine'.*valid sets are .*, mine,"):
        check_augment_name("mien", {"mine": []})


def test_a_registered_set_gets_every_form_and_a_name_registers_once(image, monkeypatch):
    import ffdi_tune.data.augment as augment

    # registrations made here go into a copy of the registry, dropped after the test
    monkeypatch.setattr(augment, "_AUGMENT_REGISTRY", dict(augment._AUGMENT_REGISTRY))

    @register_augment(
        "vflip",
        batched=BatchFlips(vflip=1.0),
        on_device=lambda K, size: [K.RandomVerticalFlip(p=1)],
    )
    def _vflip(size, params):
        return [v2.RandomVerticalFlip(p=1.0)]

    assert "vflip" in augment_names() and has_device_form("vflip+color")
    assert torch.equal(build_augment("vflip", 48)(image), image.flip(-2))
    assert torch.equal(batch_augment("vflip")(image[None])[0], image.flip(-2))
    assert torch.equal(device_augment("vflip", 48)(image[None])[0], image.flip(-2).float())
    with pytest.raises(ValueError, match="'flips' is registered twice"):
        register_augment("flips")(_vflip)


def test_sets_without_device_form_fall_back():
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


# sets whose strengths are continuous (drawn per image): 64 copies of one image all differ
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


@pytest.mark.parametrize("name", sorted(set(DEVICE_NAMES) - {"none"}))
def test_device_form_gives_the_same_kind_of_images(name, many_images):
    """Batched form vs torchvision image by image, on the same 512 images: about as many images
    changed, by about as much; and the random gate (and, for continuous sets, the strength) is drawn
    per image, not once for the whole batch."""
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
    t = device_augment("photometric", 32)
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(t(many_images[:64]))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
