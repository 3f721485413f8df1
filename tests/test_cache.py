"""Decode-once cache: built once under concurrency, reused, invalidated, never half-read, exact."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from ffdi_tune.cache import cache_key, cached_array
from ffdi_tune.config import DataConfig, TrainSettings
from ffdi_tune.data import load_images, read_split


@pytest.fixture()
def data(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    return root


def split(root):
    return read_split(DataConfig(root=str(root)), "train")


def test_identical_pixels_to_direct_decode_and_reused(data, tmp_path):
    direct = load_images(split(data), 24)
    cache = tmp_path / "cache"
    first = load_images(split(data), 24, cache_dir=cache)
    assert torch.equal(first, direct)
    files = sorted(p.name for p in cache.iterdir() if p.suffix == ".npy")
    assert len(files) == 1
    mtime = (cache / files[0]).stat().st_mtime_ns
    again = load_images(split(data), 24, cache_dir=cache)
    assert torch.equal(again, direct) and (cache / files[0]).stat().st_mtime_ns == mtime
    # another size is another entry
    load_images(split(data), 16, cache_dir=cache)
    assert len([p for p in cache.iterdir() if p.suffix == ".npy"]) == 2


def test_changed_file_invalidates(data, tmp_path):
    cache = tmp_path / "cache"
    s = split(data)
    key = cache_key(s.paths, 24)
    load_images(s, 24, cache_dir=cache)
    from PIL import Image

    Image.new("RGB", (32, 32), (255, 0, 0)).save(s.paths[0], "JPEG")
    os.utime(s.paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    s2 = split(data)
    assert cache_key(s2.paths, 24) != key
    fresh = load_images(s2, 24, cache_dir=cache)
    assert fresh[0, 0].float().mean() > 200 and fresh[0, 2].float().mean() < 50  # the new red image


def test_rewrite_with_old_size_and_mtime_invalidates(data, tmp_path):
    """cp -p, rsync -a or touch -r can put back a file's size and mtime, not its inode change time."""
    cache = tmp_path / "cache"
    s = split(data)
    before = load_images(s, 24, cache_dir=cache)
    sizes = [p.stat().st_size for p in s.paths]
    small, big = sizes.index(min(sizes)), sizes.index(max(sizes))
    victim, st = s.paths[big], s.paths[big].stat()
    other = s.paths[small].read_bytes()
    victim.write_bytes(other + b"\0" * (st.st_size - len(other)))  # another image, padded to the old size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    after = load_images(split(data), 24, cache_dir=cache)
    assert torch.equal(after[big], before[small]) and not torch.equal(after[big], before[big])  # decoded again
    assert len([p for p in cache.iterdir() if p.suffix == ".npy"]) == 2


def test_failed_build_leaves_nothing_readable(data, tmp_path):
    cache = tmp_path / "cache"
    s = split(data)

    def broken(out):
        out[0] = 7
        raise RuntimeError("killed mid-decode")

    with pytest.raises(RuntimeError):
        cached_array(s.paths, 24, broken, cache)
    assert not [p for p in cache.iterdir() if p.suffix == ".npy"]
    # a stale temporary file from a killed process is never taken for the cache
    (cache / f".{cache_key(s.paths, 24)}.999.tmp.npy").write_bytes(b"half")
    arr, built = cached_array(s.paths, 24, lambda out: out.fill(3), cache)
    assert built and (arr == 3).all()


RACE = """
import sys, time
from pathlib import Path
from ffdi_tune.cache import cached_array
from ffdi_tune.config import DataConfig
from ffdi_tune.data import read_split, _decode_into
s = read_split(DataConfig(root=sys.argv[1]), "train")
def slow(out):
    time.sleep(1.0)  # hold the lock long enough for the other process to arrive
    _decode_into(s.paths, 24, out, 1)
arr, built = cached_array(s.paths, 24, slow, Path(sys.argv[2]))
print("built" if built else "reused", int(arr.sum()))
"""


def test_two_processes_racing_decode_once(data, tmp_path):
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(data), str(cache)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o[0] for o in outs) == ["built", "reused"]
    assert outs[0][1] == outs[1][1]  # same pixels seen by both


def test_cached_and_uncached_training_agree(data):
    from ffdi_tune.train import train_trial

    s = TrainSettings(backbone="resnet10t", img_size=32, batch_size=8, epochs=1, augment="flips")
    aucs = []
    for cache in (True, False):
        out = []
        train_trial(s, DataConfig(root=str(data), cache=cache), lambda m, f: out.append(m["val_auc"]))
        aucs.append(out[-1])
    assert aucs[0] == pytest.approx(aucs[1], abs=1e-6)
