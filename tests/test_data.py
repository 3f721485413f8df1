"""FFDI layout reading and label checks: each bad input is one clear DataError."""

from __future__ import annotations

import shutil

import pytest
import torch

from ffdi_tune.config import DataConfig
from ffdi_tune.data import check_dataset, load_images, read_split
from ffdi_tune.errors import DataError


@pytest.fixture()
def data(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    return root


def labels(root, split="trainset"):
    return root / f"{split}_label.txt"


def check(root, **kw):
    return check_dataset(DataConfig(root=str(root), **kw))


def test_missing_root_or_split(data, tmp_path):
    with pytest.raises(DataError, match="split folder .*trainset does not exist"):
        check(tmp_path / "nope")
    shutil.rmtree(data / "valset")
    with pytest.raises(DataError, match="valset does not exist"):
        check(data)


def test_missing_label_file(data):
    labels(data).unlink()
    with pytest.raises(DataError, match="label file .*trainset_label.txt is missing"):
        check(data)


def test_wrong_header(data):
    text = labels(data).read_text().replace("img_name,target", "name,label", 1)
    labels(data).write_text(text)
    with pytest.raises(DataError, match="header is 'name,label', but img_name,target is needed"):
        check(data)


def test_extra_column(data):
    lines = labels(data).read_text().splitlines()
    labels(data).write_text("\n".join([lines[0] + ",x"] + [ln + ",1" for ln in lines[1:]]) + "\n")
    with pytest.raises(DataError, match="header"):
        check(data)


def test_bad_target_names_row(data):
    lines = labels(data).read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",2"
    labels(data).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="row 4: target '2' is not 0 or 1"):
        check(data)


def test_duplicate_name(data):
    lines = labels(data).read_text().splitlines()
    labels(data).write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DataError, match="listed more than once"):
        check(data)


def test_missing_image(data):
    first = labels(data).read_text().splitlines()[1].split(",")[0]
    (data / "trainset" / first).unlink()
    with pytest.raises(DataError, match=f"1 listed image.* missing .*first '{first}'"):
        check(data)


@pytest.mark.parametrize("name", ["../valset/x.jpg", "/etc/passwd"])
def test_path_traversal_refused(data, name):
    lines = labels(data).read_text().splitlines()
    lines[1] = f"{name},1"
    labels(data).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="path traversal"):
        check(data)


def test_single_class_split(data):
    lines = labels(data, "valset").read_text().splitlines()
    labels(data, "valset").write_text("\n".join([lines[0]] + [ln.rsplit(",", 1)[0] + ",0" for ln in lines[1:]]) + "\n")
    with pytest.raises(DataError, match="only one class .*ROC AUC is undefined"):
        check(data)


def test_empty_testset(data):
    for p in (data / "testset").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="split test .* has no images"):
        check(data)


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
    Image.open(s.paths[1]).convert("RGB").resize((50, 40)).save(s.paths[1], "PNG")  # PNG bytes, .jpg name
    x = load_images(s, 32)
    assert x.shape == (len(s), 3, 32, 32)
    assert (x[0, 0] == x[0, 1]).all()


def test_cmyk_and_16_bit_images_load_as_rgb(data):
    import numpy as np
    from PIL import Image

    s = read_split(DataConfig(root=str(data)), "train")
    reference = load_images(s, 32)
    Image.open(s.paths[0]).convert("CMYK").save(s.paths[0], "JPEG", quality=100)
    gray = np.asarray(Image.open(s.paths[1]).convert("L"), dtype=np.uint16) * 257  # 16-bit, same picture
    Image.fromarray(gray).save(s.paths[1], "PNG")
    x = load_images(s, 32)
    assert x.dtype == torch.uint8 and x.shape == reference.shape
    assert (x[0].int() - reference[0].int()).abs().float().mean() < 12  # CMYK round trip stays close
    expected = torch.from_numpy((gray / 257).round().astype(np.uint8))
    assert (x[1, 0].int() - expected.int()).abs().max() <= 1 and torch.equal(x[1, 0], x[1, 2])
