"""FFDI layout reading and decoding: label rows and files checked, any image mode read as RGB."""

from __future__ import annotations

import pytest
import torch

from ffdi_tune.data.layout import load_images, read_split, scan_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError


def labels(root, split="trainset"):
    return root / f"{split}_label.txt"


def test_test_list_csv(data):
    names = sorted(p.name for p in (data / "testset").iterdir())[:3]
    (data / "list.csv").write_text("img_name\n" + "\n".join(reversed(names)) + "\n")
    s = read_split(DataConfig(root=str(data), test_list="list.csv"), "test")
    assert list(s.names) == list(reversed(names))


def test_not_an_image(data):
    first = labels(data).read_text().splitlines()[1].split(",")[0]
    (data / "trainset" / first).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot be read as an image"):
        load_images(read_split(DataConfig(root=str(data)), "train"), 32)


def test_grayscale_and_png_images_load(data):
    from PIL import Image

    s = read_split(DataConfig(root=str(data)), "train")
    Image.open(s.paths[0]).convert("L").save(s.paths[0], "JPEG")
    # PNG bytes, .jpg name
    Image.open(s.paths[1]).convert("RGB").resize((50, 40)).save(s.paths[1], "PNG")
    x = load_images(s, 32)
    assert x.shape == (len(s), 3, 32, 32)
    assert (x[0, 0] == x[0, 1]).all()


def test_cmyk_and_16_bit_images_load_as_rgb(data):
    import numpy as np
    from PIL import Image

    s = read_split(DataConfig(root=str(data)), "train")
    reference = load_images(s, 32)
    Image.open(s.paths[0]).convert("CMYK").save(s.paths[0], "JPEG", quality=100)
    # 16-bit, same picture
    gray = np.asarray(Image.open(s.paths[1]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(s.paths[1], "PNG")
    x = load_images(s, 32)
    assert x.dtype == torch.uint8 and x.shape == reference.shape
    # CMYK round trip stays close
    assert (x[0].int() - reference[0].int()).abs().float().mean() < 12
    expected = torch.from_numpy((gray / 257).round().astype(np.uint8))
    assert (x[1, 0].int() - expected.int()).abs().max() <= 1 and torch.equal(x[1, 0], x[1, 2])


def test_scan_returns_the_good_rows_and_a_line_per_bad_one(data):
    rows = labels(data).read_text().splitlines()
    bad_target, missing = rows[1].rsplit(",", 1)[0] + ",x", rows[2].split(",")[0]
    labels(data).write_text("\n".join([rows[0], bad_target] + rows[2:]) + "\n")
    (data / "trainset" / missing).unlink()
    cfg = DataConfig(root=str(data), exclude={"train": [rows[3].split(",")[0]]})
    split, problems = scan_split(cfg, "train")
    assert len(problems) == 2 and "row 2: target 'x' is not 0 or 1" in problems[0]
    assert f"image '{missing}' is missing" in problems[1]
    # the bad row, the missing file and the excluded image are left out; the rest keep their targets
    assert list(split.names) == [r.split(",")[0] for r in rows[4:]]
    assert split.targets.tolist() == [int(r.split(",")[1]) for r in rows[4:]]
    with pytest.raises(DataError, match=r"^2 problems in the dataset: .*row 2: .*is missing"):
        read_split(cfg, "train")


def _jpeg(path, w: int, h: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def test_crop_decodes_at_full_resolution_and_never_resizes_a_file_already_at_its_side(tmp_path):
    """``resize: crop``: no JPEG draft, no resize when the shorter side is the cache side: the
    cached square is the file's own centre pixels."""
    import numpy as np
    from PIL import Image

    from ffdi_tune.data.layout import _decode, centre_square

    tall = _jpeg(tmp_path / "tall.jpg", 48, 80)
    with Image.open(tall) as im:
        full = np.asarray(im.convert("RGB"))
    cropped = _decode(tall, 48, resize="crop")
    assert np.array_equal(cropped, full[16:64, :48])  # (80 - 48) // 2 rows off the top
    big = _jpeg(tmp_path / "big.jpg", 256, 256, seed=1)
    with Image.open(big) as im:
        whole = np.asarray(im.convert("RGB"))
    assert np.array_equal(_decode(big, 256, resize="crop"), whole)  # no draft at full size
    # a larger file is brought down once, keeping its aspect; squash fills the frame instead
    assert _decode(big, 64, resize="crop").shape == (64, 64, 3)
    assert centre_square(Image.fromarray(whole[:, :128]), 64).size == (64, 64)


def test_a_perturbation_acts_before_a_crops_resize_as_a_re_upload_would(tmp_path):
    from ffdi_tune.data.layout import _decode

    big = _jpeg(tmp_path / "big.jpg", 160, 120)
    seen = []

    def perturb(image, name):
        seen.append(image.size)
        return image

    _decode(big, 60, perturb, "big.jpg", resize="crop")
    _decode(big, 60, perturb, "big.jpg")
    assert seen == [(160, 120), (60, 60)]  # cropped: the file's pixels; squashed: the model's


def test_crops_and_squashes_are_cached_apart(tmp_path):
    from ffdi_tune.data.layout import Split

    paths = tuple(_jpeg(tmp_path / f"{i}.jpg", 64, 48, seed=i) for i in range(3))
    split = Split("val", tuple(p.name for p in paths), paths, None)
    cache = tmp_path / "cache"
    squashed = load_images(split, 32, cache_dir=cache)
    cropped = load_images(split, 32, cache_dir=cache, resize="crop")
    assert squashed.shape == cropped.shape == (3, 3, 32, 32)
    assert not torch.equal(squashed, cropped) and len(list(cache.glob("*.npy"))) == 2
