"""Decode-once cache: built once under concurrency, reused, invalidated, never half-read, exact;
planned and capped before any trial."""

from __future__ import annotations

import os
import time

import pytest
import torch

from ffdi_tune.data.cache import cache_key, cached_array
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.training.settings import TrainSettings


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
    """cp -p, rsync -a or touch -r restore a file's size and mtime, not its inode change time."""
    cache = tmp_path / "cache"
    s = split(data)
    before = load_images(s, 24, cache_dir=cache)
    sizes = [p.stat().st_size for p in s.paths]
    small, big = sizes.index(min(sizes)), sizes.index(max(sizes))
    victim, st = s.paths[big], s.paths[big].stat()
    other = s.paths[small].read_bytes()
    # another image, padded to the old size
    victim.write_bytes(other + b"\0" * (st.st_size - len(other)))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    after = load_images(split(data), 24, cache_dir=cache)  # decoded again
    assert torch.equal(after[big], before[small]) and not torch.equal(after[big], before[big])
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


def test_two_processes_racing_decode_once(data, tmp_path):
    """Forced, not hoped for: the second process asks for the entry while the first builds it."""
    import multiprocessing

    from cache_race import builder, waiter

    ctx = multiprocessing.get_context("spawn")
    decoding, waiting, go, out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    cache = str(tmp_path / "cache")
    first = ctx.Process(target=builder, args=(str(data), cache, decoding, go, out))
    first.start()
    try:
        assert decoding.wait(120)  # the first holds the lock and is decoding
        second = ctx.Process(target=waiter, args=(str(data), cache, waiting, out))
        second.start()
        assert waiting.wait(120)  # the second found no entry and waits for the lock
        go.set()
        results = [out.get(timeout=120) for _ in range(2)]
        first.join(60), second.join(60)
    finally:
        go.set()
        for p in (first, locals().get("second")):
            if p is not None and p.is_alive():
                p.kill()
    assert sorted(r[0] for r in results) == ["built", "reused"]
    assert results[0][1] == results[1][1]  # same pixels seen by both


def test_cached_and_uncached_training_agree(data):
    from ffdi_tune.training.trial import train_trial

    s = TrainSettings(backbone="resnet10t", img_size=32, batch_size=8, epochs=1, augment="flips")
    aucs = []
    for cache in (True, False):
        out = []
        train_trial(
            s,
            DataConfig(root=str(data), cache=cache),
            lambda m, f, out=out: out.append(m["val_auc"]),
        )
        aucs.append(out[-1])
    assert aucs[0] == pytest.approx(aucs[1], abs=1e-6)


def _plan(data, **search):
    from ffdi_tune.config import parse_search_config
    from ffdi_tune.data.holdout import split_valset
    from ffdi_tune.search.cache_plan import planned_entries

    cfg = parse_search_config(
        {
            "name": "plan",
            "data": {"root": str(data)},
            "train": {"backbone": "resnet10t", "img_size": 32},
            "space": {"img_size": {"choice": [32, 48]}},
            **search,
        }
    )
    return cfg, planned_entries(cfg, cfg.data, split_valset(read_split(cfg.data, "val"), 0.5, 0))


def test_plan_lists_what_trials_read_and_its_size(data):
    _, entries = _plan(data)
    labels = [e.label() for e in entries]
    assert labels == [
        "trainset at 32 px",
        "trainset at 48 px",
        "valset at 32 px",
        "valset at 48 px",
        "valset at 32 px (perturbed)",
        "valset at 48 px (perturbed)",
    ]
    # the selection part only
    assert entries[0].bytes == 48 * 32 * 32 * 3 + 128 and len(entries[2].split) == 12


def test_crop_trials_read_one_cache_side_for_training_and_evaluation(data, tmp_path):
    from ffdi_tune.search.cache_plan import build

    space = {"img_size": {"choice": [32, 48]}, "resize": {"choice": ["squash", "crop"]}}
    _, entries = _plan(data, space=space, robust_val={"enabled": False})
    labels = [e.label() for e in entries]
    # squashed at each side; cropped from each trial's default cache side (1.25 x, rounded to 8)
    assert labels == [
        "trainset at 32 px",
        "trainset at 40 px (crops)",
        "trainset at 48 px",
        "trainset at 64 px (crops)",
        "valset at 32 px",
        "valset at 40 px (crops)",
        "valset at 48 px",
        "valset at 64 px (crops)",
    ]
    crops = [e for e in entries if e.resize == "crop"]
    build(crops, tmp_path / "cache", echo=lambda line: None, workers=1, kind="threads")
    assert all(e.built(tmp_path / "cache") for e in crops)
    assert not any(e.built(tmp_path / "cache") for e in entries if e.resize == "squash")


def test_a_cache_that_does_not_fit_is_refused_before_any_trial(data, tmp_path, monkeypatch):

    from ffdi_tune.errors import DataError
    from ffdi_tune.search import cache_plan

    _, entries = _plan(data)
    with pytest.raises(
        DataError, match=r"need 0\.0 GB .*more than data.cache_max_gb=1e-05; lower img_size"
    ):
        cache_plan.check_fits(entries, tmp_path / "cache", max_gb=1e-5)
    cache_plan.check_fits(entries, tmp_path / "cache", max_gb=1.0)  # fits
    monkeypatch.setattr(cache_plan, "_disk_free", lambda folder: int(0.5e9))  # a nearly full disk
    with pytest.raises(
        DataError, match=r"disk has 0\.5 GB free .*FFDI_TUNE_CACHE or data.cache_dir.*--no-cache"
    ):
        cache_plan.check_fits(entries, tmp_path / "cache", max_gb=None)


def test_build_fills_the_cache_with_the_pixels_trials_get(data, tmp_path):
    from ffdi_tune.search.cache_plan import build

    _, entries = _plan(data)
    cache = tmp_path / "cache"
    assert build(entries, cache, echo=lambda line: None, workers=2) == 6
    assert (
        all(e.built(cache) for e in entries) and build(entries, cache, echo=lambda line: None) == 0
    )
    for e in entries:  # built by two worker processes: the same pixels as a plain decode
        assert torch.equal(
            load_images(e.split, e.img_size, cache_dir=cache, perturb=e.perturb),
            load_images(e.split, e.img_size, perturb=e.perturb),
        )


def test_a_cache_over_its_cap_stops_the_run_before_any_trial(
    tiny_data, tmp_path, monkeypatch, capsys
):
    from ffdi_tune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(
        f"name: capped\ndata: {{root: '{tiny_data}', cache_max_gb: 1.0e-6}}\n"
        "train: {backbone: test_resnet, img_size: 32}\n"
    )
    assert main(["run", "space.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "data.cache_max_gb" in err
    assert "--no-cache" in err and not (tmp_path / "runs").exists()
