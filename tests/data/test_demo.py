"""Demo data: FFDI layout, real JPEG files, both classes, deterministic bytes; and its shift-aware
form, one forgery kind only in testset, with labels kept for evaluation."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from helpers import REPO
from PIL import Image

from ffdi_tune.cli import main
from ffdi_tune.config import parse_search_config
from ffdi_tune.data.check import check_dataset
from ffdi_tune.data.demo import FORGERY_KINDS, MANIFEST, write_demo_dataset
from ffdi_tune.data.layout import ensure_dataset, read_split
from ffdi_tune.data.settings import DataConfig, DemoSpec
from ffdi_tune.errors import ConfigError, DataError


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


# -- a forgery kind kept out of trainset and valset ---------------------------------------------


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift") / "d"
    return write_demo_dataset(
        root, n_train=40, n_val=20, n_test=12, size=32, seed=2, unseen_forgery="checkerboard"
    )


def test_unseen_kind_only_in_testset(shifted):
    m = pd.read_csv(shifted / MANIFEST, keep_default_na=False)
    fakes = m[m.target == 1]
    assert "checkerboard" not in set(fakes[fakes.split != "testset"].kind)
    assert set(fakes[fakes.split != "testset"].kind) <= set(FORGERY_KINDS) - {"checkerboard"}
    assert set(fakes[fakes.split == "testset"].kind) == {"checkerboard"}
    assert set(m[m.target == 0].kind) == {""}
    # the manifest agrees with the label files
    for split in ("trainset", "valset", "testset"):
        labels = pd.read_csv(shifted / f"{split}_label.txt")
        mine = m[m.split == split].set_index("img_name").target
        assert dict(zip(labels.img_name, labels.target, strict=True)) == mine.to_dict()


def test_test_labels_do_not_disturb_the_test_split(shifted):
    test = read_split(DataConfig(root=str(shifted)), "test")
    labels = pd.read_csv(shifted / "testset_label.txt")
    assert test.targets is None and list(test.names) == sorted(labels.img_name)
    assert set(labels.target) == {0, 1} and len(labels) == 12


def test_without_unseen_kind_every_split_mixes_kinds(tiny_data):
    m = pd.read_csv(tiny_data / MANIFEST, keep_default_na=False)
    assert len(set(m[(m.target == 1) & (m.split == "trainset")].kind)) >= 3


def test_bad_kind_is_refused(tmp_path, capsys):
    with pytest.raises(
        DataError, match=r"unknown forgery kind 'checker' \(did you mean 'checkerboard'"
    ):
        write_demo_dataset(
            tmp_path / "x", n_train=4, n_val=4, n_test=2, size=32, unseen_forgery="checker"
        )
    assert (
        main(
            [
                "demo-data",
                str(tmp_path / "y"),
                "--n-train",
                "4",
                "--n-val",
                "4",
                "--n-test",
                "2",
                "--size",
                "32",
                "--unseen-forgery",
                "nois",
            ]
        )
        == 2
    )
    assert "did you mean 'noise'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_and_spec_write_the_same_data(tmp_path, capsys):
    assert (
        main(
            [
                "demo-data",
                str(tmp_path / "cli"),
                "--n-train",
                "8",
                "--n-val",
                "4",
                "--n-test",
                "4",
                "--size",
                "32",
                "--seed",
                "1",
                "--unseen-forgery",
                "blend",
            ]
        )
        == 0
    )
    assert "blend is in testset only" in capsys.readouterr().out
    spec = DemoSpec(n_train=8, n_val=4, n_test=4, size=32, seed=1, unseen_forgery="blend")
    ensure_dataset(DataConfig(root=str(tmp_path / "spec"), demo=spec))
    for name in ("trainset_label.txt", "testset_label.txt", MANIFEST):
        assert (tmp_path / "cli" / name).read_text() == (tmp_path / "spec" / name).read_text()


def test_spec_key_is_validated():
    with pytest.raises(
        ConfigError, match=r"data.demo.unseen_forgery: unknown forgery kind 'smoth'"
    ):
        parse_search_config(
            {"name": "t", "data": {"root": "/d", "demo": {"unseen_forgery": "smoth"}}}, "x.yaml"
        )
    cfg = parse_search_config(
        __import__("yaml").safe_load((REPO / "search_spaces" / "demo_shift.yaml").read_text())
    )
    assert cfg.data.demo.unseen_forgery in FORGERY_KINDS
