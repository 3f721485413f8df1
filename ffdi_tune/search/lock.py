"""One run per search: a lock held from the name check to the submission.

Two ``ffdi-tune run`` of one search (the same name started twice, or a ``--resume`` while the
first still runs) would write the same Tune state, JSON files and MLflow parent run. The first
takes an OS file lock (``filelock``) keyed by the search's output folder and records its host, pid
and start beside it; a second gets one ``error:`` line naming them. The lock lives in the decode
cache's folder (``locks/``), not in ``runs/``, so a run refused before it starts leaves nothing
there. The OS drops the lock when its process dies, however it dies: a killed run never blocks
its ``--resume``.

The lock is per machine. A search kept in a bucket (``search.storage: s3://...``) can be run from
any machine: there the run also takes a lease on the search's MLflow experiment
(:class:`~ffdi_tune.tracking.Lease`), renewed while it runs and taken over only once stale, so a
second machine is refused the same way.
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

from ffdi_tune import tracking
from ffdi_tune.data.cache import default_cache_dir
from ffdi_tune.errors import SearchError
from ffdi_tune.files import write_atomic
from ffdi_tune.tracking.lease import STALE_S

__all__ = ["search_lock", "lock_path"]


def lock_path(out_dir: Path) -> Path:
    """The lock file of the search whose output folder is ``out_dir``."""
    key = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:20]
    return default_cache_dir() / "locks" / f"{key}.lock"


@contextmanager
def search_lock(
    out_dir: Path, name: str, lease_store: tracking.TrackingConfig | None = None
) -> Iterator[None]:
    """Hold the search's lock while the block runs, and with ``lease_store`` (a search kept in a
    bucket) its lease in that MLflow store too; SearchError, naming the holder, when another run of
    it holds either."""
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
        with _lease(lease_store, name):
            yield
    finally:
        lock.release()


@contextmanager
def _lease(store: tracking.TrackingConfig | None, name: str) -> Iterator[None]:
    """The search's lease in ``store`` for the block (nothing without a store)."""
    if store is None:
        yield
        return
    uri, artifacts = tracking.resolve_tracking(store)
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        print(
            f"note: the search is kept in a bucket, but its lease lives in the MLflow store {uri}, "
            "which other machines cannot see; point tracking.uri at a shared MLflow server so "
            "that a second machine is refused too"
        )
    reader = tracking.Tracker(uri, artifacts)
    lease = tracking.Lease(reader, reader.experiment_id(name), stale_s=STALE_S)
    try:
        lease.__enter__()
    except tracking.LeaseHeld as held:
        raise SearchError(
            f"search {name!r} is already running on another machine ({_lease_holder(held)}); "
            f"wait for it to end, stop it, or start another search with --name NEW (a lease "
            f"not renewed for {STALE_S:.0f} s is taken over)"
        ) from None
    except Exception as exc:  # the store refused or is away: one line, nothing started
        raise SearchError(
            f"the search's lease cannot be taken in the MLflow store {uri} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); check tracking.uri and that "
            "the store answers"
        ) from None
    try:
        yield
    finally:
        lease.__exit__(None, None, None)


def _lease_holder(held: tracking.LeaseHeld) -> str:
    who = held.holder
    return f"host {who.get('host', '?')}, pid {who.get('pid', '?')}, renewed {held.age_s:.0f} s ago"


def _describe(holder: Path) -> str:
    try:
        info = json.loads(holder.read_text())
    except (OSError, ValueError):
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
    return f"host {info['host']}, pid {info['pid']}, since {since}"
