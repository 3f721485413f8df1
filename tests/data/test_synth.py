"""Self-blended fakes: changed only inside their mask, seeded, made from real images only, in
every place a batch is put together, and a trial that trains with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffdi_tune.data.loaders import train_batches
from ffdi_tune.data.synth import MASK_SHAPES, SelfBlender, SynthSettings, self_blend
from ffdi_tune.training.settings import TrainSettings


def _image(seed: int = 0, side: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((3, side, side), generator=g) * 255).to(torch.uint8)


@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_a_synthesised_fake_differs_from_its_source_only_inside_its_mask(shape):
    image = _image()
    for seed in range(5):
        fake, mask = self_blend(image, torch.Generator().manual_seed(seed), shape)
        assert fake.dtype == torch.uint8 and fake.shape == image.shape
        changed = (fake != image).any(dim=0)
        assert not (changed & (mask == 0)).any()  # outside the mask: the very same pixels
        assert changed.float().mean() > 0.03  # and inside it, a visible change
        assert 0.05 < float((mask > 0).float().mean()) < 0.8 and float(mask.max()) <= 1
    # seeded: the same generator state, the same fake
    again = self_blend(image, torch.Generator().manual_seed(4), shape)[0]
    assert torch.equal(again, self_blend(image, torch.Generator().manual_seed(4), shape)[0])


def test_only_real_images_become_fakes_and_about_p_of_them():
    n = 400
    batch = torch.stack([_image(i, 16) for i in range(n)])
    targets = torch.tensor([0, 1] * (n // 2))
    out, new_targets = SelfBlender(SynthSettings(kind="selfblend", p=0.3))(
        batch, targets, torch.Generator().manual_seed(0)
    )
    turned = (targets == 0) & (new_targets == 1)
    assert 0.2 < float(turned.sum()) / (n // 2) < 0.4
    assert torch.equal(new_targets[targets == 1], targets[targets == 1])  # fakes stay fakes
    unchanged = ~turned
    assert torch.equal(out[unchanged], batch[unchanged])  # only the turned ones changed
    assert all(not torch.equal(out[i], batch[i]) for i in torch.nonzero(turned).flatten()[:20])
    assert torch.equal(batch[0], _image(0, 16))  # the input batch is not modified


@pytest.mark.parametrize("workers", [0, 1])
def test_the_batches_carry_the_synthesised_fakes_the_same_every_seeded_epoch(workers):
    images = torch.stack([_image(i, 16) for i in range(32)])
    targets = np.zeros(32, dtype=int)
    blender = SelfBlender(SynthSettings(kind="selfblend", p=0.5))

    def epoch():
        return list(
            train_batches(
                images,
                targets,
                8,
                torch.Generator().manual_seed(3),
                sample_transform=(lambda x: x) if workers else None,
                num_workers=workers,
                synth=blender,
            )
        )

    first, second = epoch(), epoch()
    made = torch.cat([t for _, t in first])
    assert 4 <= int(made.sum()) <= 28  # about half of the 32 real images became fakes
    for (b1, t1), (b2, t2) in zip(first, second, strict=True):
        assert torch.equal(b1, b2) and torch.equal(t1, t2)


def test_synth_is_a_validated_setting_written_three_ways():
    assert TrainSettings().synth.on is False
    assert TrainSettings(synth="selfblend").synth == SynthSettings(kind="selfblend", p=0.3)
    searched = TrainSettings(synth='{"kind": "selfblend", "p": 0.5}')  # a searched choice's label
    assert searched.synth.p == 0.5 and searched.synth.on
    assert TrainSettings(synth={"kind": "none"}).model_dump()["synth"] == {"kind": "none", "p": 0.3}
    with pytest.raises(ValueError, match="kind"):
        TrainSettings(synth={"kind": "faceswap"})
    with pytest.raises(ValueError, match="less than or equal to 1"):
        TrainSettings(synth={"kind": "selfblend", "p": 1.5})


def test_a_trial_trains_on_synthesised_fakes(tiny_data):
    from helpers import train_collecting

    s = TrainSettings(
        backbone="test_resnet", img_size=32, batch_size=8, epochs=1, synth="selfblend"
    )
    _, reports = train_collecting(s, tiny_data)
    metrics, best, _ = reports[-1]
    assert np.isfinite(metrics["train_loss"]) and best["settings"]["synth"]["kind"] == "selfblend"
