"""Demo data: FFDI layout, real JPEG files, both classes, deterministic bytes."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from PIL import Image

from ffdi_tune.cli import main
from ffdi_tune.data.check import check_dataset
from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.layout import read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_and_classes(tiny_data):
    for d in ("trainset", "valset", "testset"):
        assert (tiny_data / d).is_dir()
    for split, n in (("trainset", 48), ("valset", 24)):
        df = pd.read_csv(tiny_data / f"{split}_label.txt")
        assert list(df.columns) == ["img_name", "target"]
        assert len(df) == n and set(df.target) == {0, 1}
        for name in df.img_name[:5]:
            with Image.open(tiny_data / split / name) as im:
                assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
    assert len(list((tiny_data / "testset").glob("*.jpg"))) == 8
    summary = check_dataset(DataConfig(root=str(tiny_data))).summary
    assert summary["train"] == {"images": 48, "fake": 24, "real": 24}
    assert summary["test"] == {"images": 8}


def test_deterministic(tmp_path):
    a = write_demo_dataset(tmp_path / "a", n_train=6, n_val=4, n_test=2, size=32, seed=5)
    b = write_demo_dataset(tmp_path / "b", n_train=6, n_val=4, n_test=2, size=32, seed=5)
    c = write_demo_dataset(tmp_path / "c", n_train=6, n_val=4, n_test=2, size=32, seed=6)
    assert digest(a) == digest(b) != digest(c)


def test_test_split_is_every_image_sorted(tiny_data):
    s = read_split(DataConfig(root=str(tiny_data)), "test")
    assert list(s.names) == sorted(s.names) and s.targets is None


def test_refuses_non_empty_folder(tiny_data):
    with pytest.raises(DataError, match="not empty"):
        write_demo_dataset(tiny_data, n_train=4, n_val=4, n_test=1)


def test_cli_demo_data(tmp_path, capsys):
    assert (
        main(
            [
                "demo-data",
                str(tmp_path / "d"),
                "--n-train",
                "8",
                "--n-val",
                "4",
                "--n-test",
                "2",
                "--size",
                "32",
                "--difficulty",
                "0.9",
            ]
        )
        == 0
    )
    assert "wrote 8 train" in capsys.readouterr().out
    assert main(["demo-data", str(tmp_path / "e"), "--difficulty", "2"]) == 2
    assert "difficulty must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
