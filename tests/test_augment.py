"""Every named augmentation set runs on a real decoded JPEG and keeps shape and dtype."""

from __future__ import annotations

import pytest
import torch

from ffdi_tune.augment import AUGMENT_SETS, build_augment
from ffdi_tune.config import DataConfig
from ffdi_tune.data import load_images, read_split

NAMES = sorted(AUGMENT_SETS) + ["rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "original-mstd0.5", "flips+jpeg"]


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
    sets = {"mine": [{"name": "RandomHorizontalFlip", "p": 1.0}, {"name": "ColorJitter", "brightness": 0.5, "apply_p": 0.0}]}
    out = build_augment("mine", 48, sets)(image)
    assert torch.equal(out, image.flip(-1))


def test_unknown_set_lists_valid_names():
    with pytest.raises(ValueError, match="valid sets are .*flips"):
        build_augment("flipz", 48)
