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
