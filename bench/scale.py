"""The competition's data size: what the dataset pre-check and the decode-once cache cost per image.

Generates a few thousand 512 px demo images once (``runs/scale-data/unique``) and copies them under
new names into trainsets of 5,000 and 20,000 images (decoding cost does not depend on uniqueness).
For each size it times, with every CPU of this machine, in threads and in processes:

- the pre-check (``data_check``: every image decoded at 1/8 scale, which reads every byte);
- building the cache entry at ``img_size`` 256 (each image decoded and resized into the memory map);

and records the entry's size on disk and the peak memory (resident set) of the process and its
workers. The build runs once more into RAM (``/dev/shm``) to separate decoding from writing, and the
disk's sequential write rate is measured: at many CPUs the build can be bound by the disk. Prints a
table per size and whether the cost per image stays flat (a linear curve); the last line is one
JSON object with ``check_ms_per_image``, ``cache_build_ms_per_image`` (the faster way, at the
largest size, per image of wall time with all CPUs) and ``cache_gb_per_100k_at_256``.
About 8 minutes on 2 cores; needs ~10 GB of disk and ~4 GB of RAM in /dev/shm:

    python bench/scale.py [--sizes 5000 20000] [--unique 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ffdi_tune.data.cache import cached_array
from ffdi_tune.data.check import check_dataset
from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.layout import decode_split, read_split
from ffdi_tune.data.passes import available_cpus
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.search.cache_plan import BUILD_KIND

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "scale-data"
IMG_SIZE = 256
MEMORY_DIR = Path("/dev/shm")  # a RAM-backed folder, to time the build without the disk


def unique_images(n: int) -> Path:
    root = WORK / "unique"
    if not (root / "trainset_label.txt").is_file() or len(list((root / "trainset").iterdir())) < n:
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        write_demo_dataset(root, n_train=n, n_val=8, n_test=4, size=512, seed=0)
        print(f"generated {n} unique 512 px images in {time.perf_counter() - t:.0f} s", flush=True)
    return root


def dataset(n: int, source: Path) -> Path:
    """A trainset of ``n`` images: copies of the unique ones under new names, with labels."""
    root = WORK / f"train-{n}"
    labels = pd.read_csv(source / "trainset_label.txt")
    if (root / "trainset_label.txt").is_file():
        return root
    (root / "trainset").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        src = labels.iloc[i % len(labels)]
        name = f"{i:07d}.jpg"
        shutil.copyfile(source / "trainset" / src["img_name"], root / "trainset" / name)
        rows.append((name, int(src["target"])))
    pd.DataFrame(rows, columns=["img_name", "target"]).to_csv(
        root / "trainset_label.txt", index=False
    )
    for split in ("valset", "testset"):
        shutil.copytree(source / split, root / split, dirs_exist_ok=True)
    shutil.copy(source / "valset_label.txt", root / "valset_label.txt")
    return root


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports kilobytes


class MemorySampler:
    """Peak anonymous (heap) and file-backed resident memory of this process, sampled every 0.1 s.

    The cache entry is a memory-mapped file: pages written through it count as resident but are
    file-backed, so the kernel can write them out and drop them; the heap is what must fit.
    """

    def __init__(self):
        self.anon_mb = self.file_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> tuple[float, float]:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return (int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            anon, file = self._read()
            self.anon_mb, self.file_mb = max(self.anon_mb, anon), max(self.file_mb, file)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(root: Path, workers: int) -> dict:
    split = read_split(DataConfig(root=str(root)), "train")
    out = {"images": len(split)}
    for kind in ("threads", "processes"):
        t = time.perf_counter()
        # cache off: no verdicts kept from an earlier pass, every image is decoded
        check = check_dataset(
            DataConfig(root=str(root), cache=False), splits=("train",), workers=workers, kind=kind
        )
        out[f"check_{kind}_ms"] = (time.perf_counter() - t) / len(split) * 1000
        assert check.summary["train"]["images"] == len(split)
        with (
            tempfile.TemporaryDirectory(prefix="ffdi-scale-", dir=WORK) as tmp,
            MemorySampler() as mem,
        ):
            t = time.perf_counter()
            arr, built = cached_array(
                split.paths,
                IMG_SIZE,
                lambda a, kind=kind: decode_split(split, IMG_SIZE, a, workers, kind),
                Path(tmp),
            )
            out[f"build_{kind}_ms"] = (time.perf_counter() - t) / len(split) * 1000
            out["cache_gb"] = sum(p.stat().st_size for p in Path(tmp).glob("*.npy")) / 1e9
            assert built and int(np.asarray(arr[-1]).sum()) > 0
            del arr
        out[f"heap_mb_during_{kind}_build"] = mem.anon_mb
        out[f"file_backed_mb_during_{kind}_build"] = mem.file_mb
        out[f"peak_rss_mb_after_{kind}"] = peak_rss_mb()
    if MEMORY_DIR.is_dir():  # the same build into RAM: what decoding costs without the disk
        with tempfile.TemporaryDirectory(prefix="ffdi-scale-", dir=MEMORY_DIR) as tmp:
            t = time.perf_counter()
            arr, _ = cached_array(
                split.paths,
                IMG_SIZE,
                lambda a: decode_split(split, IMG_SIZE, a, workers, BUILD_KIND),
                Path(tmp),
            )
            out["build_in_memory_ms"] = (time.perf_counter() - t) / len(split) * 1000
            del arr
    return out


def disk_write_mb_s(gb: float) -> float:
    """Sequential write rate of the cache's disk: ``gb`` written and flushed, in MB/s."""
    block = b"\0" * (1 << 24)
    blocks = int(gb * 1e9) // len(block)
    path = WORK / "write-test.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(blocks):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    rate = blocks * len(block) / 1e6 / (time.perf_counter() - t)
    path.unlink()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    p.add_argument("--unique", type=int, default=2000)
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    source = unique_images(args.unique)
    workers = available_cpus()
    rows = []
    for n in args.sizes:
        r = measure(dataset(n, source), workers)
        rows.append(r)
        print(
            f"{n:>7} images: check {r['check_threads_ms']:.2f} ms/img (threads) "
            f"{r['check_processes_ms']:.2f} (processes); cache build at {IMG_SIZE} px "
            f"{r['build_threads_ms']:.2f} ms/img (threads) {r['build_processes_ms']:.2f} "
            f"(processes); entry {r['cache_gb']:.2f} GB; driver heap "
            f"{r['heap_mb_during_threads_build']:.0f} MB, file-backed pages "
            f"{r['file_backed_mb_during_threads_build']:.0f} MB (threads); peak RSS of any "
            f"process {r['peak_rss_mb_after_processes']:.0f} MB",
            flush=True,
        )
    for r in rows:
        if "build_in_memory_ms" in r:
            print(
                f"{r['images']:>7} images: cache build into RAM ({BUILD_KIND}) "
                f"{r['build_in_memory_ms']:.2f} ms/img: decoding alone, without the disk"
            )
    small, large = rows[0], rows[-1]
    write_rate = disk_write_mb_s(min(4.0, large["cache_gb"]))
    entry_mb_per_image = large["cache_gb"] * 1000 / large["images"]
    build_rate = entry_mb_per_image / (large[f"build_{BUILD_KIND}_ms"] / 1000)
    disk_bound_ms = entry_mb_per_image / write_rate * 1000
    print(
        f"the cache's disk writes {write_rate:.0f} MB/s sequentially; the build at "
        f"{large['images']:,} images wrote {build_rate:.0f}"
        f" MB/s ({BUILD_KIND}); a build of this disk can go no faster than "
        f"{disk_bound_ms:.2f} ms/img, whatever the CPUs"
    )
    check_kind = min(("threads", "processes"), key=lambda k: large[f"check_{k}_ms"])
    build_kind = min(("threads", "processes"), key=lambda k: large[f"build_{k}_ms"])
    growth = {
        k: large[f"{k}_ms"] / small[f"{k}_ms"]
        for k in (f"check_{check_kind}", f"build_{build_kind}")
    }
    print(
        f"faster: check in {check_kind}, build in {build_kind}; cost per image from "
        f"{small['images']:,} to {large['images']:,} images: x{growth[f'check_{check_kind}']:.2f} "
        f"(check), x{growth[f'build_{build_kind}']:.2f} (build) "
        f"({'linear' if max(growth.values()) < 1.2 else 'NOT linear'})"
    )
    gb_per_100k = large["cache_gb"] / large["images"] * 100_000
    print(
        json.dumps(
            {
                "workers": workers,
                "img_size": IMG_SIZE,
                "sizes": args.sizes,
                "check_ms_per_image": round(large[f"check_{check_kind}_ms"], 3),
                "cache_build_ms_per_image": round(large[f"build_{build_kind}_ms"], 3),
                "check_kind": check_kind,
                "build_kind": build_kind,
                "cost_growth": {k: round(v, 3) for k, v in growth.items()},
                "cache_gb_per_100k_at_256": round(gb_per_100k, 2),
                "disk_write_mb_s": round(write_rate, 0),
                "disk_bound_build_ms_per_image": round(disk_bound_ms, 3),
                "peak_rss_mb": round(max(r["peak_rss_mb_after_processes"] for r in rows), 0),
                "peak_heap_mb": round(
                    max(
                        max(r["heap_mb_during_threads_build"], r["heap_mb_during_processes_build"])
                        for r in rows
                    ),
                    0,
                ),
                "rows": [
                    {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                    for r in rows
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
