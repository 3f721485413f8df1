"""A local journal of tracking writes that could not reach the tracking store, replayed in order later.

Each entry is one JSON line (an operation name and its arguments); files an entry refers to (a
checkpoint, a table) are copied into the journal's folder first, because the originals may be gone
by the time the store is back. Lines are appended and fsynced one by one, so a killed process loses
at most the entry it was writing. ``tracking.json`` beside the journal says which store it belongs
to, so ``ffdi-tune sync`` can replay it from a fresh process.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ffdi_tune.files import is_bucket_uri, write_atomic

__all__ = ["Spool", "SPOOL_DIR", "search_spool"]

SPOOL_DIR = "mlflow-spool"  # under a search's output folder


def search_spool(storage: str, name: str) -> Path:
    """The spool folder of search ``name``: under ``search.storage``, or under ``./runs`` for a bucket URI."""
    from ffdi_tune.errors import TrackingError

    local = "runs" if is_bucket_uri(storage) else storage.removeprefix("file://")
    search = Path(local).expanduser().resolve() / name
    if not search.is_dir():
        raise TrackingError(f"no search {name!r} under {search.parent}; pass its name, and --storage with its "
                            "search.storage when that is not runs")
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
        """Set aside an entry the store refused (kept in ``rejected.jsonl`` for a person to read)."""
        with open(self.folder / "rejected.jsonl", "a") as f:
            f.write(json.dumps(dict(entry, error=why)) + "\n")

    def keep(self, entries: list[dict[str, Any]]) -> None:
        """Replace the journal with ``entries`` (those not replayed yet); clear it when empty."""
        if entries or (self.folder / "rejected.jsonl").is_file():
            write_atomic(self.journal, "".join(json.dumps(e) + "\n" for e in entries))
            return
        shutil.rmtree(self.folder, ignore_errors=True)
