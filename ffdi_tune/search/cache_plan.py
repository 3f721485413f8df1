"""The decoded arrays a search's trials will read: whether they fit, and building them up front.

Before any trial starts, :func:`planned_entries` lists every (split, side, perturbation) a trial of
the search can read: trainset at each ``img_size``, the selection part of valset at each evaluation
side, and its perturbed copy when ``robust_val`` is on. :func:`check_fits` refuses the search, with
the sizes and the ways out, when they would exceed ``data.cache_max_gb`` or the free space of the
cache's disk. On one machine :func:`build` then decodes what is missing with every CPU, so trials
start from a warm cache instead of the first trial decoding with its one CPU while the others wait;
on a cluster :func:`build_here` does both on every node that can run a trial, with all its CPUs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ffdi_tune.config import SearchConfig
from ffdi_tune.data.cache import cache_key
from ffdi_tune.data.holdout import Holdout
from ffdi_tune.data.layout import Split, decode_key, load_images, read_split
from ffdi_tune.data.passes import available_cpus
from ffdi_tune.data.perturb import Perturber
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError
from ffdi_tune.training.settings import crop_cache_size

__all__ = ["CacheEntry", "planned_entries", "check_fits", "build", "build_here", "BUILD_KIND"]

# Threads and processes build within 15% of each other in bench/scale.py, the winner changing
# between runs; in processes no part of the work (the copy into the map) waits for one GIL. The
# build runs before Ray starts and before the tracking store is opened, so the fork copies no Ray
# or MLflow thread.
BUILD_KIND = "processes"
HEADER_BYTES = 128  # of a .npy file
SPARE_GB = 1.0  # left free on the cache's disk


@dataclass(frozen=True)
class CacheEntry:
    split: Split
    img_size: int
    perturb: Perturber | None = None
    resize: str = "squash"  # or crop: centre squares at full resolution (train.resize)

    @property
    def bytes(self) -> int:
        return len(self.split) * self.img_size * self.img_size * 3 + HEADER_BYTES

    def label(self) -> str:
        return (
            f"{self.split.name}set at {self.img_size} px"
            + (" (perturbed)" if self.perturb else "")
            + (" (crops)" if self.resize == "crop" else "")
        )

    def built(self, cache_dir: Path) -> bool:
        key = cache_key(self.split.paths, self.img_size, decode_key(self.resize, self.perturb))
        return (Path(cache_dir) / f"{key}.npy").exists()


def planned_entries(cfg: SearchConfig, data: DataConfig, holdout: Holdout) -> list[CacheEntry]:
    """Every decoded array a trial of ``cfg`` can read, each once."""
    train_sizes, eval_sizes = set(), set()
    for backbone in cfg.backbones():
        sizes = {int(v) for v in cfg.backbone_values(backbone, "img_size")}
        asked = cfg.backbone_values(backbone, "eval_img_size")
        evals = {int(v) for v in asked if v is not None} | (sizes if None in asked else set())
        resizes = set(cfg.backbone_values(backbone, "resize"))
        if "squash" in resizes:
            train_sizes |= {(s, "squash") for s in sizes}
            eval_sizes |= {(s, "squash") for s in evals}
        if "crop" in resizes:  # one cache side serves training and evaluation
            crops = _crop_sides(cfg.backbone_values(backbone, "cache_size"), sizes, asked)
            train_sizes |= crops
            eval_sizes |= crops
    train, val = read_split(data, "train"), read_split(data, "val").only(holdout.select_names)
    entries = [CacheEntry(train, s, None, r) for s, r in sorted(train_sizes)] + [
        CacheEntry(val, s, None, r) for s, r in sorted(eval_sizes)
    ]
    if cfg.robust_val.enabled:
        perturb = Perturber(cfg.robust_val)
        entries += [CacheEntry(val, s, perturb, r) for s, r in sorted(eval_sizes)]
    return entries


def _crop_sides(cache_sizes: list, sizes: set[int], evals: list) -> set[tuple[int, str]]:
    """The cache sides ``resize: crop`` trials decode at: the ``cache_size`` values, and for a
    null one each trial's default (from its larger side: training or evaluation)."""
    given = {(int(c), "crop") for c in cache_sizes if c is not None}
    if None not in cache_sizes:
        return given
    sides = {max(s, int(e) if e is not None else s) for s in sizes for e in evals}
    return given | {(crop_cache_size(side), "crop") for side in sides}


def _disk_free(folder: Path) -> int:
    folder = Path(folder).expanduser().resolve()
    while not folder.exists():  # the cache folder is made when first used
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_fits(entries: list[CacheEntry], cache_dir: Path, max_gb: float | None) -> None:
    """Refuse (one DataError) entries that exceed ``max_gb`` in all, or the disk's free space."""
    total = sum(e.bytes for e in entries)
    missing = [e for e in entries if not e.built(cache_dir)]
    new = sum(e.bytes for e in missing)
    free = _disk_free(cache_dir)
    parts = ", ".join(f"{e.label()} {_gb(e.bytes)}" for e in entries)
    fixes = (
        "lower img_size (the cache grows with its square), put the cache on a bigger disk "
        "(FFDI_TUNE_CACHE or data.cache_dir), or pass --no-cache to decode in every trial"
    )
    if max_gb is not None and total > max_gb * 1e9:
        raise DataError(
            f"decode cache: this search's decoded images need {_gb(total)} ({parts}), more than "
            f"data.cache_max_gb={max_gb:g}; {fixes}"
        )
    if new > free - SPARE_GB * 1e9:
        raise DataError(
            f"decode cache: this search's decoded images need {_gb(new)} more in {cache_dir} "
            f"({parts}), but its disk has {_gb(free)} free (and {SPARE_GB:g} GB is kept spare); "
            f"{fixes}"
        )


def build(
    entries: list[CacheEntry],
    cache_dir: Path,
    echo=print,
    workers: int | None = None,
    kind: str = BUILD_KIND,
) -> int:
    """Decode the missing entries into the cache with ``workers`` (default: every CPU); return how
    many were missing."""
    missing = [e for e in entries if not e.built(cache_dir)]
    for e in missing:
        echo(
            f"decode cache: building {e.label()} ({len(e.split):,} images, {_gb(e.bytes)}) in "
            f"{cache_dir}"
        )
        load_images(
            e.split, e.img_size, workers or available_cpus(), cache_dir, e.perturb, kind, e.resize
        )
    return len(missing)


def build_here(entries: list[CacheEntry], data: DataConfig, workers: int) -> str | None:
    """On a cluster node (as a Ray task holding ``workers`` CPUs): check the entries fit this
    node's cache, then build the missing ones in threads (a Ray worker must not fork). Returns
    why not, or None. The cache folder is the node's own (its ``$FFDI_TUNE_CACHE`` or
    ``data.cache_dir``), where its trials will look."""
    from ffdi_tune.data.layout import cache_dir_of

    cache_dir = cache_dir_of(data)
    if cache_dir is None:
        return None
    try:
        check_fits(entries, cache_dir, data.cache_max_gb)
        build(entries, cache_dir, print, workers=workers, kind="threads")
    except DataError as exc:
        return str(exc)
    return None
