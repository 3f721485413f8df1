"""Decode-once cache: each split's images, resized, as one uint8 array on local disk per node.

The first trial that needs a split at a given ``img_size`` decodes every image once and writes
``<key>.npy`` (N x S x S x 3, uint8) under the cache folder; every later trial and epoch on that
node maps the file instead of decoding JPEGs. The key hashes the file list, each file's size, mtime,
inode and ctime, the size, the resize policy and a ``variant`` (the recipe of a perturbed copy, see
:mod:`ffdi_tune.data.perturb`), so a changed dataset or recipe gets a new entry. Concurrent trials
take a file lock, and the array is written under a temporary name and renamed when complete, so a
half-written cache is never read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock

from ffdi_tune.errors import DataError

__all__ = [
    "default_cache_dir",
    "check_writable",
    "file_stamp",
    "cache_key",
    "cached_array",
    "cache_size_mb",
    "RESIZE_POLICY",
]

# Bump when decoding or resizing changes, so old entries are not reused.
RESIZE_POLICY = "full-frame-bilinear-draft-v1"


def default_cache_dir() -> Path:
    """``$FFDI_TUNE_CACHE``, else ``$XDG_CACHE_HOME/ffdi-tune``, else ``~/.cache/ffdi-tune``."""
    if os.environ.get("FFDI_TUNE_CACHE"):
        return Path(os.environ["FFDI_TUNE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ffdi-tune"


def check_writable(folder: Path, what: str, fix: str) -> Path:
    """``folder``, made if needed, after a test write; a DataError naming it and ``fix`` when it
    cannot be written (a file in the way, no permission, a read-only disk)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ffdi-write-test-"):
            pass
    except OSError as exc:
        raise DataError(
            f"{what} {folder} cannot be written ({exc.strerror or type(exc).__name__}); {fix}"
        ) from None
    return Path(folder)


def file_stamp(path: Path) -> str:
    """What identifies a file's current content without reading it: size, mtime, inode and ctime.

    ``cp -p``, ``rsync -a`` or ``touch -r`` can give a rewritten file its old size and mtime, but
    not its old inode change time (ctime), which only the kernel sets.
    """
    st = path.stat()
    return f"{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"


def cache_key(paths: tuple[Path, ...], img_size: int, variant: str = "") -> str:
    """Hash of what the decoded array depends on: each file's path and :func:`file_stamp`, the
    size, the resize policy and the variant."""
    extra = f"|{variant}" if variant else ""
    h = hashlib.sha256(f"{RESIZE_POLICY}|{img_size}|{len(paths)}{extra}".encode())
    for p in paths:
        h.update(f"{p.resolve()}|{file_stamp(p)}\n".encode())
    return h.hexdigest()[:32]


def cached_array(
    paths: tuple[Path, ...], img_size: int, decode_into, cache_dir: Path, variant: str = ""
) -> tuple[np.ndarray, bool]:
    """The uint8 array of ``paths`` at ``img_size``, building it once with ``decode_into(out)``.

    Returns ``(array, built)``: a copy-on-write memory map of the cache file, and whether this call
    decoded it. ``decode_into`` fills an ``N x S x S x 3`` uint8 array in place; ``variant`` names
    anything else its pixels depend on (e.g. a perturbation recipe).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, img_size, variant)
    final = cache_dir / f"{key}.npy"
    built = False
    if not final.exists():
        with FileLock(str(cache_dir / f"{key}.lock")):
            if not final.exists():  # another process may have built it while we waited
                _check_room(cache_dir, len(paths) * img_size * img_size * 3, img_size)
                tmp = cache_dir / f".{key}.{os.getpid()}.tmp.npy"
                try:
                    out = np.lib.format.open_memmap(
                        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), img_size, img_size, 3)
                    )
                    decode_into(out)
                    out.flush()
                    del out
                    (cache_dir / f"{key}.json").write_text(
                        json.dumps(
                            {
                                "images": len(paths),
                                "img_size": img_size,
                                "policy": RESIZE_POLICY,
                                "variant": variant,
                                "first": str(paths[0]) if paths else "",
                            }
                        )
                    )
                    os.replace(tmp, final)
                    built = True
                finally:
                    if tmp.exists():
                        tmp.unlink()
    return np.load(final, mmap_mode="c"), built


def _check_room(cache_dir: Path, needed: int, img_size: int) -> None:
    free = shutil.disk_usage(cache_dir).free
    if needed > free:
        raise DataError(
            f"decode cache: {needed / 1e9:.1f} GB of images at {img_size} px do not fit in "
            f"{cache_dir} ({free / 1e9:.1f} GB free on this node); lower img_size, put the cache "
            "on a bigger disk (FFDI_TUNE_CACHE or data.cache_dir), or pass --no-cache to decode "
            "in every trial"
        )


def cache_size_mb(cache_dir: Path) -> float:
    """Megabytes the finished cache entries in ``cache_dir`` take on disk."""
    return (
        sum(p.stat().st_size for p in Path(cache_dir).glob("*.npy")) / 1e6
        if Path(cache_dir).is_dir()
        else 0.0
    )
