"""Where a trial's augmentation runs (device, gather, loader) and what is built for that place, with
real augmentation sets and tiny real timm models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffdi_tune.data.augment import BatchFlips
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.training.placement import augment_placement, augmenters, loader_workers
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import train_trial

CPU, GPU = torch.device("cpu"), torch.device("cuda")  # GPU only compared, never used


@pytest.mark.parametrize("mode,batched", [("on", True), ("auto", False), ("off", False)])
def test_device_augment_setting_picks_where_sets_run(tiny_data, monkeypatch, mode, batched):
    """device_augment=on runs a set's batched form on the device (here the CPU) instead of the
    loader's per-image path; auto does so only on a GPU."""
    import ffdi_tune.data.augment as augment
    import ffdi_tune.training.placement as placement

    calls = {"batched": 0, "per_image": 0}
    forward = augment.DeviceAugment.forward

    def spy_forward(self, batch):
        calls["batched"] += 1
        return forward(self, batch)

    build = placement.build_augment

    def spy_build(*args, **kwargs):
        inner = build(*args, **kwargs)

        def per_image(img):
            calls["per_image"] += 1
            return inner(img)

        return per_image

    monkeypatch.setattr(augment.DeviceAugment, "forward", spy_forward)
    monkeypatch.setattr(placement, "build_augment", spy_build)
    s = TrainSettings(
        backbone="test_resnet",
        img_size=32,
        batch_size=8,
        epochs=1,
        augment="color",
        device_augment=mode,
    )
    assert placement.augment_placement(s, None, CPU) == ("device" if batched else "loader")
    best = train_trial(s, DataConfig(root=str(tiny_data)), lambda m, f: None, device="cpu")
    assert best["epoch"] == 1 and np.isfinite(best["train_loss"])
    if batched:
        assert calls == {"batched": 48 // 8, "per_image": 0}
    else:
        assert calls == {"batched": 0, "per_image": 48}


def test_augment_placement_for_every_kind_of_set():
    mine = {"mine": [{"name": "RandomHorizontalFlip"}]}
    cases = [  # set, device_augment, device, user sets -> where
        ("flips", "off", GPU, None, "device"),
        ("flips", "auto", CPU, None, "gather"),
        ("color", "auto", GPU, None, "device"),
        ("color", "auto", CPU, None, "loader"),
        ("color", "off", GPU, None, "loader"),
        ("color", "on", CPU, None, "device"),
        ("flips+color", "auto", GPU, None, "device"),
        ("flips+jpeg", "auto", GPU, None, "loader"),
        ("randaugment", "on", GPU, None, "loader"),
        ("mine", "on", GPU, mine, "loader"),
        ("color+mine", "on", GPU, mine, "loader"),
    ]
    for name, mode, device, user_sets, where in cases:
        s = TrainSettings(augment=name, device_augment=mode)
        assert augment_placement(s, user_sets, device) == where, (name, mode, device)


def test_augmenters_build_the_set_for_its_place():
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    gather = augmenters(TrainSettings(augment="flips", img_size=32), None, CPU)
    assert gather.where == "gather" and isinstance(gather.while_gathering, BatchFlips)
    assert gather.on_device is None and gather.per_image is None
    device = augmenters(TrainSettings(augment="color", img_size=32, device_augment="on"), None, CPU)
    assert device.where == "device" and device.while_gathering is device.per_image is None
    out = device.on_device(batch)  # kornia's form: a batch in, a batch of the same shape out
    assert out.shape == batch.shape and torch.isfinite(out.float()).all()
    loader = augmenters(TrainSettings(augment="color", img_size=32), None, CPU)
    assert loader.where == "loader" and loader.on_device is loader.while_gathering is None
    assert loader.per_image(batch[0]).shape == (3, 32, 32)


def test_loader_workers_feed_a_gpu_and_leave_a_cpu_alone(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # the trial's resources.cpu
    assert loader_workers("auto", "loader", GPU) == 3 and loader_workers("auto", "loader", CPU) == 0
    assert loader_workers("auto", "device", GPU) == 0 and loader_workers("auto", "gather", CPU) == 0
    assert loader_workers(2, "loader", CPU) == 2 and loader_workers(2, "device", GPU) == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert loader_workers("auto", "loader", GPU) == 1


@pytest.fixture(scope="module")
def image(tiny_data):
    return load_images(read_split(DataConfig(root=str(tiny_data)), "train"), 32)[0]


def per_image(augment: str, user_sets=None, **jpeg):
    """The per-image augmentation a CPU trial of these settings gets."""
    built = augmenters(TrainSettings(augment=augment, img_size=32, **jpeg), user_sets, CPU)
    assert built.where == "loader"
    return built.per_image


def test_jpeg_strength_follows_the_settings(image):
    torch.manual_seed(0)
    off = per_image("jpeg", jpeg_p=0.0)
    assert all(
        torch.equal(o, image) or torch.equal(o, image.flip(-1))
        for o in (off(image) for _ in range(10))
    )
    hard = per_image("jpeg", jpeg_quality=(5, 5), jpeg_p=1.0)
    light = per_image("jpeg", jpeg_quality=(100, 100), jpeg_p=1.0)

    def err(t):
        o = t(image)
        o = (
            o
            if (o.int() - image.int()).abs().sum() < (o.int() - image.flip(-1).int()).abs().sum()
            else o.flip(-1)
        )
        return (o.int() - image.int()).abs().float().mean().item()

    assert err(hard) > 3 * err(light) and err(hard) > 2
    # user sets that name the jpeg set get the same strength
    user = per_image("mine", {"mine": [{"name": "jpeg"}]}, jpeg_p=0.0)
    assert all(
        torch.equal(o, image) or torch.equal(o, image.flip(-1))
        for o in (user(image) for _ in range(10))
    )
