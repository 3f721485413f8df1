"""A local journal of the tracking writes that could not reach their store, replayed in order.

Each entry is one JSON line (an operation name and its arguments); files an entry refers to (a
checkpoint, a table) are copied into the journal's folder first, because the originals may be gone
by the time the store is back. Lines are appended and fsynced one by one, so a killed process loses
at most the entry it was writing. ``tracking.json`` beside the journal says which store it belongs
to, so ``ffdi-tune sync`` can replay it from a fresh process. :class:`SpooledWrites` applies each
write at once, or journals it (and every later one) while the store is unreachable and replays them
in order once the store answers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ffdi_tune.files import is_bucket_uri, write_atomic

__all__ = ["Spool", "SpooledWrites", "SPOOL_DIR", "search_spool"]

SPOOL_DIR = "mlflow-spool"  # under a search's output folder
log = logging.getLogger(__name__)


def search_spool(storage: str, name: str) -> Path:
    """The spool folder of search ``name``: under ``search.storage`` (``./runs`` for a bucket)."""
    from ffdi_tune.errors import TrackingError

    local = "runs" if is_bucket_uri(storage) else storage.removeprefix("file://")
    search = Path(local).expanduser().resolve() / name
    if not search.is_dir():
        raise TrackingError(
            f"no search {name!r} under {search.parent}; pass its name, and --storage with its "
            "search.storage when that is not runs"
        )
    return search / SPOOL_DIR


class Spool:
    """Append-only journal in ``folder``: ``entries.jsonl``, ``files/`` and ``tracking.json``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.journal = self.folder / "entries.jsonl"

    def __len__(self) -> int:
        return len(self.entries())

    def entries(self) -> list[dict[str, Any]]:
        if not self.journal.is_file():
            return []
        out = []
        for line in self.journal.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # the last line of a process killed mid-write
        return out

    def store(self) -> dict[str, Any]:
        """The tracking store the entries belong to (``{"uri": ..., "artifact_location": ...}``)."""
        path = self.folder / "tracking.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def append(self, entry: dict[str, Any], store: dict[str, Any]) -> None:
        """Add one entry; an entry's ``path`` is copied into the spool (the original may vanish)."""
        (self.folder / "files").mkdir(parents=True, exist_ok=True)
        if not (self.folder / "tracking.json").is_file():
            write_atomic(self.folder / "tracking.json", json.dumps(store))
        if entry.get("path"):
            src = Path(entry["path"])
            copy = self.folder / "files" / uuid.uuid4().hex / src.name  # the name is the artifact's
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, copy)
            entry = dict(entry, path=str(copy))
        with open(self.journal, "a+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():  # after a process killed mid-line, start a fresh line
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    f.write("\n")
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def reject(self, entry: dict[str, Any], why: str) -> None:
        """Set aside an entry the store refused (in ``rejected.jsonl``, for a person to read)."""
        with open(self.folder / "rejected.jsonl", "a") as f:
            f.write(json.dumps(dict(entry, error=why)) + "\n")

    def keep(self, entries: list[dict[str, Any]]) -> None:
        """Replace the journal with ``entries`` (those not replayed yet); clear it when empty."""
        if entries or (self.folder / "rejected.jsonl").is_file():
            write_atomic(self.journal, "".join(json.dumps(e) + "\n" for e in entries))
            return
        shutil.rmtree(self.folder, ignore_errors=True)


class SpooledWrites:
    """Writes to a store that may be away: applied at once, or journaled and replayed in order.

    ``apply(entry)`` performs one write against the store; ``unreachable(exc)`` says whether its
    failure means the store cannot be reached (then the entry, and every later one, waits in the
    spool) rather than that it refused the write. While entries wait, each new write first tries
    to replay them, at most every ``probe_s`` seconds, so an outage costs one failed request per
    interval rather than one per write. Without a spool, writes are applied directly.
    """

    def __init__(
        self,
        apply: Callable[[dict[str, Any]], Any],
        unreachable: Callable[[BaseException], bool],
        spool: Spool | None,
        store: dict[str, Any],
        describe: str,
        probe_s: float = 10.0,
    ):
        self.apply, self.unreachable, self.spool, self.store = apply, unreachable, spool, store
        self.describe, self.probe_s = describe, probe_s
        self._last_try = 0.0

    def pending(self) -> int:
        return len(self.spool) if self.spool else 0

    def write(self, entry: dict[str, Any]) -> Any:
        if self.spool is None:
            return self.apply(entry)
        if self.pending() and not self.replay(wait=False):
            # still unreachable: queue behind the others, in order
            self.spool.append(entry, self.store)
            return None
        try:
            return self.apply(entry)
        except Exception as exc:
            if not self.unreachable(exc):
                raise
            log.warning(
                "%s is unreachable (%s); keeping its writes in %s until it is back",
                self.describe,
                str(exc).splitlines()[0][:200],
                self.spool.folder,
            )
            self._last_try = time.monotonic()
            self.spool.append(entry, self.store)
            return None

    def replay(self, wait: bool = True) -> bool:
        """Apply the spooled writes in order; True when none is left.

        Without ``wait`` it tries at most every ``probe_s`` seconds.
        """
        if not self.pending():
            return True
        if not wait and time.monotonic() - self._last_try < self.probe_s:
            return False
        entries = self.spool.entries()
        done = 0
        try:
            for entry in entries:
                try:
                    self.apply(entry)
                except Exception as exc:
                    if self.unreachable(exc):
                        return False
                    # Refused (a run deleted meanwhile, a lost file): set aside, so that it
                    # never blocks the rest.
                    self.spool.reject(
                        entry,
                        f"{type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:300] if str(exc) else ''}",
                    )
                    log.warning(
                        "%s refused a kept %s write (%s); it is set aside in %s",
                        self.describe,
                        entry["op"],
                        type(exc).__name__,
                        self.spool.folder / "rejected.jsonl",
                    )
                done += 1
        finally:
            # Progress first, files after: a replay killed in between may repeat a write, but it
            # never loses one.
            self._last_try = time.monotonic()
            self.spool.keep(entries[done:])
            for entry in entries[:done]:
                if entry.get("path"):
                    shutil.rmtree(Path(entry["path"]).parent, ignore_errors=True)
        log.warning("%s answers again: %d kept write(s) replayed", self.describe, len(entries))
        return True
