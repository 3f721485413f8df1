"""Test-time views: the eight symmetries of the square, exact on a batch, and their name checks."""

from __future__ import annotations

import pytest
import torch

from ffdi_tune.scoring.tta import TTA_VIEWS, apply_view, check_views


def test_views_are_the_eight_symmetries_of_the_square():
    x = torch.arange(2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
    seen = {name: apply_view(name, x) for name in TTA_VIEWS}
    for name, view in seen.items():
        assert view.shape == x.shape, name
        # each image is only rearranged within itself, channel by channel
        assert torch.equal(view.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values), name
    assert len({tuple(v.flatten().tolist()) for v in seen.values()}) == 8
    # closed under composition: any view of a view is one of the eight
    for first in TTA_VIEWS:
        for second in TTA_VIEWS:
            both = apply_view(second, apply_view(first, x))
            assert any(torch.equal(both, v) for v in seen.values()), (first, second)
    # the mirror across the anti-diagonal: pixel (i, j) comes from (n-1-j, n-1-i)
    anti, n = apply_view("antitranspose", x)[0, 0], 5
    assert all(anti[i, j] == x[0, 0, n - 1 - j, n - 1 - i] for i in range(n) for j in range(n))


def test_check_views_names_the_bad_view():
    assert check_views(["identity", "hflip"]) == ["identity", "hflip"]
    with pytest.raises(ValueError, match="unknown TTA view 'rot45'.*valid views are identity"):
        check_views(["identity", "rot45"])
    with pytest.raises(ValueError, match=r"did you mean 'vflip'"):
        check_views(["vflp"])
    with pytest.raises(ValueError, match="at least one view"):
        check_views([])
    with pytest.raises(ValueError, match="lists a view twice"):
        check_views(["hflip", "hflip"])


def test_views_are_exact_flips_and_rotations():
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    assert torch.equal(apply_view("identity", x), x)
    assert torch.equal(apply_view("hflip", x)[..., 0], x[..., -1])
    assert torch.equal(apply_view("vflip", x)[..., 0, :], x[..., -1, :])
    assert torch.equal(apply_view("rot180", x), x.flip(-1).flip(-2))
    assert torch.equal(apply_view("rot90", apply_view("rot270", x)), x)
    assert torch.equal(apply_view("transpose", x)[0, 0], x[0, 0].T)
    # rot90 turns counter-clockwise: the top row becomes the left column, reversed
    assert torch.equal(apply_view("rot90", x)[0, 0][:, 0], x[0, 0][0].flip(0))
    assert len({tuple(apply_view(v, x).flatten().tolist()) for v in TTA_VIEWS}) == len(TTA_VIEWS)


def test_check_views_errors():
    with pytest.raises(ValueError, match="unknown TTA view 'hflp'.*did you mean 'hflip'"):
        check_views(["identity", "hflp"])
    with pytest.raises(ValueError, match="twice"):
        check_views(["hflip", "hflip"])


def test_scale_views_zoom_in_and_out_at_the_same_side():
    x = torch.arange(2 * 3 * 20 * 20, dtype=torch.float32).reshape(2, 3, 20, 20)
    zoom_in, zoom_out = apply_view("scale1.1", x), apply_view("scale0.9", x)
    assert zoom_in.shape == zoom_out.shape == x.shape
    # zooming in keeps the centre: the middle pixel is about where it was
    assert torch.allclose(zoom_in[..., 10, 10], x[..., 10, 10], rtol=0.02)
    assert not torch.allclose(zoom_in, x) and not torch.allclose(zoom_out, x)
    # zooming out by half: the centre half is the image at half size, the border a reflection
    half = apply_view("scale0.5", x)
    small = torch.nn.functional.interpolate(x, size=(10, 10), mode="bilinear", antialias=True)
    assert torch.allclose(half[..., 5:15, 5:15], small)
    assert torch.equal(half[..., 4, 5:15], half[..., 6, 5:15])  # reflected
    assert check_views(["identity", "scale0.9", "scale1.25"]) == [
        "identity",
        "scale0.9",
        "scale1.25",
    ]
    for bad in ("scale3", "scale0.2", "scale1", "scale-1", "scalex"):
        with pytest.raises(ValueError, match="scale<s> with s from 0.5 to 2.0"):
            check_views([bad])


def test_a_crop_members_views_end_with_a_cut_square_and_corner_views_cut_the_corners():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert torch.equal(apply_view("identity", x, 4), x[..., 2:6, 2:6])  # the centre, not a resize
    assert torch.equal(apply_view("hflip", x, 4), x.flip(-1)[..., 2:6, 2:6])
    assert torch.equal(apply_view("crop_tl", x, 4), x[..., :4, :4])
    assert torch.equal(apply_view("crop_tr", x, 4), x[..., :4, 4:])
    assert torch.equal(apply_view("crop_bl", x, 4), x[..., 4:, :4])
    assert torch.equal(apply_view("crop_br", x, 4), x[..., 4:, 4:])
    assert apply_view("scale1.5", x, 4).shape == (2, 3, 4, 4)
    # a member fed whole frames has no border: its corner views are the identity
    assert torch.equal(apply_view("crop_tl", x), x) and torch.equal(apply_view("crop_br", x, 8), x)
    assert check_views(["identity", "crop_tl", "crop_br"]) == ["identity", "crop_tl", "crop_br"]
    with pytest.raises(ValueError, match="did you mean .*'crop_tl'"):
        check_views(["crop_lt"])
