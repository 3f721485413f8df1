"""File helpers every stage shares: whole-or-nothing writes; a bucket URI told from a path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic", "is_bucket_uri"]


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def is_bucket_uri(location: str) -> bool:
    """Whether ``location`` names object storage (``s3://``, ``gs://``...) rather than a local
    folder.

    >>> is_bucket_uri("s3://bucket/runs"), is_bucket_uri("file:///runs"), is_bucket_uri("runs")
    (True, False, False)
    """
    return "://" in location and not location.startswith("file://")
