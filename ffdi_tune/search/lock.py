"""One run per search: a lock held from the name check to the submission.

Two ``ffdi-tune run`` of one search (the same name started twice, or a ``--resume`` while the
first still runs) would write the same Tune state, JSON files and MLflow parent run. The first
takes an OS file lock (``filelock``) keyed by the search's output folder and records its host, pid
and start beside it; a second gets one ``error:`` line naming them. The lock lives in the decode
cache's folder (``locks/``), not in ``runs/``, so a run refused before it starts leaves nothing
there. The OS drops the lock when its process dies, however it dies: a killed run never blocks
its ``--resume``.

The lock is per machine: two machines running one search into one bucket (``search.storage:
s3://...``) are not stopped by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ffdi_tune.data.cache import default_cache_dir
from ffdi_tune.errors import SearchError
from ffdi_tune.files import write_atomic

__all__ = ["search_lock", "lock_path"]


def lock_path(out_dir: Path) -> Path:
    """The lock file of the search whose output folder is ``out_dir``."""
    key = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:20]
    return default_cache_dir() / "locks" / f"{key}.lock"


@contextmanager
def search_lock(out_dir: Path, name: str) -> Iterator[None]:
    """Hold the search's lock while the block runs; SearchError, naming the holder, when another
    run of it holds the lock."""
    path = lock_path(out_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(
            f"the search lock's folder {path.parent} cannot be made ({exc.strerror}); point "
            "FFDI_TUNE_CACHE at a writable folder"
        ) from None
    holder = path.with_suffix(".json")
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SearchError(
            f"search {name!r} is already running ({_describe(holder)}); wait for it to end, "
            "stop it, or start another search with --name NEW"
        ) from None
    try:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        write_atomic(holder, json.dumps({**info, "out_dir": str(out_dir)}))
        yield
    finally:
        lock.release()


def _describe(holder: Path) -> str:
    try:
        info = json.loads(holder.read_text())
    except (OSError, ValueError):
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
    return f"host {info['host']}, pid {info['pid']}, since {since}"
