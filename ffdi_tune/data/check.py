"""Check a dataset in one pass before any trial starts: layout, labels, every image decodes.

All problems of all splits are collected and reported together (the first few and a count), so a
user fixes a broken dataset in one round instead of one error per run. Images that cannot be
decoded (empty, truncated, not an image) either stop the run or, with ``data.on_bad_image: skip``,
are left out of trainset/valset through ``data.exclude``. The per-image verdicts are cached beside
the decoded arrays, keyed by the files' paths and stamps (size, mtime, inode, ctime), so a rerun
on the same files is instant.

>>> check = check_dataset(DataConfig(root="runs/demo-data"))   # doctest: +SKIP
>>> check.summary["val"]                                         # doctest: +SKIP
{'images': 400, 'fake': 200, 'real': 200}
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ffdi_tune.data.cache import cache_key, check_writable, file_stamp
from ffdi_tune.data.layout import (
    SPLITS,
    Split,
    cache_dir_of,
    problems_message,
    scan_split,
    single_class_problem,
)
from ffdi_tune.data.passes import available_cpus, run_pass
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError
from ffdi_tune.files import write_atomic

__all__ = ["DataCheck", "check_dataset", "image_problem", "fingerprint"]

SCAN_POLICY = "scan-draft-load-sha256-v2"  # bump when image_problem or the record changes
# Threads, though bench/scale.py measured processes 0-30% faster (Pillow decodes without the
# GIL): the final stage checks too, in a driver whose MLflow and Ray threads make forking unsafe.
CHECK_KIND = "threads"


@dataclass
class DataCheck:
    """What the pre-check found: the config to train with, counts, left-out images, fingerprints."""

    data: DataConfig  # with skipped images added to ``exclude``
    summary: dict[str, dict[str, int]]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (split, img_name, reason)
    fingerprints: dict[str, str] = field(default_factory=dict)
    # byte-identical images shared by two splits: "train-val", "train-test", "val-test" -> count
    overlaps: dict[str, int] = field(default_factory=dict)


def image_problem(path: Path, content: bytes | None = None) -> str | None:
    """Why ``path`` (whose bytes are ``content`` when already read) cannot be used as an image, or
    None when it decodes.

    The JPEG decoder runs at 1/8 scale (``draft``), which still reads every byte of the file, so a
    truncated file is found at a fraction of the cost of a full decode.
    """
    try:
        if (len(content) if content is not None else path.stat().st_size) == 0:
            return "is empty (0 bytes)"
        with Image.open(io.BytesIO(content) if content is not None else path) as im:
            im.draft("RGB", (32, 32))
            im.load()
    except UnidentifiedImageError:
        return "is not an image"
    except Image.DecompressionBombError as exc:
        return f"is too large to decode safely ({exc})"
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        return (
            "is truncated"
            if "truncated" in text.lower()
            else f"cannot be decoded ({text.splitlines()[0][:120]})"
        )
    return None


def _verdicts(rows) -> list[tuple[str, str | None, str]]:
    """(img_name, reason or None, content hash) of the rows (``(name, path)``): each file read
    once, hashed and decoded."""
    out = []
    for name, path in rows:
        try:
            content = path.read_bytes()
        except OSError as exc:  # no permission, an I/O error, gone since the scan
            out.append((name, f"cannot be read ({exc.strerror or type(exc).__name__})", ""))
            continue
        out.append((name, image_problem(path, content), hashlib.sha256(content).hexdigest()[:24]))
    return out


def _scan(split: Split, cache_dir: Path | None, workers: int, kind: str) -> tuple[dict, dict]:
    """({img_name: reason} of the images of ``split`` that do not decode, {img_name: content
    hash} of every image), cached per file list."""
    record = None
    if cache_dir is not None and len(split):
        key = hashlib.sha256(f"{SCAN_POLICY}|{cache_key(split.paths, 0)}".encode()).hexdigest()[:32]
        record = Path(cache_dir) / f"scan-{key}.json"
        if record.is_file():
            kept = json.loads(record.read_text())
            return kept["bad"], kept["digests"]
    found: list[tuple[str, str | None, str]] = []
    run_pass(
        _verdicts,
        list(zip(split.names, split.paths, strict=True)),
        f"check {split.name}set",
        workers,
        kind,
        chunk=128,
        on_result=lambda rows, verdicts: found.extend(verdicts),
    )
    order = {n: i for i, n in enumerate(split.names)}
    found.sort(key=lambda item: order[item[0]])
    bad = {name: why for name, why, _ in found if why}
    digests = {name: digest for name, _, digest in found}
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(record, json.dumps({"bad": bad, "digests": digests}))
    return bad, digests


_OVERLAP_SHOWN = 3


def _overlaps(digests: dict[str, dict[str, str]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Byte-identical images across the checked splits: (split a, split b) -> [(name in a, name
    in b)], for each pair of splits that share any."""
    found = {}
    names = list(digests)
    for i, a in enumerate(names):
        by_digest = {d: n for n, d in digests[a].items()}
        for b in names[i + 1 :]:
            shared = [(by_digest[d], n) for n, d in digests[b].items() if d in by_digest]
            if shared:
                found[(a, b)] = shared
    return found


def _overlap_problem(overlaps: dict, cfg: DataConfig) -> str | None:
    """The problem of trainset and valset sharing images, unless ``data.allow_overlap``."""
    shared = overlaps.get(("train", "val"))
    if not shared or cfg.allow_overlap:
        return None
    shown = ", ".join(f"trainset {a} = valset {b}" for a, b in shared[:_OVERLAP_SHOWN])
    more = f" and {len(shared) - _OVERLAP_SHOWN} more" if len(shared) > _OVERLAP_SHOWN else ""
    return (
        f"{len(shared)} image(s) of valset are byte for byte in trainset ({shown}{more}), so the "
        "report part would not be unseen; remove them from one split, or set "
        "data.allow_overlap: true"
    )


def fingerprint(split: Split) -> str:
    """A short hash of a split's file names, labels and file stamps (see
    :func:`~ffdi_tune.data.cache.file_stamp`).

    Any added, removed, renamed, rewritten (even with its old size and mtime put back) or relabelled
    image changes it.
    """
    h = hashlib.sha256(split.name.encode())
    for i, (name, path) in enumerate(zip(split.names, split.paths, strict=True)):
        target = "" if split.targets is None else int(split.targets[i])
        h.update(f"{name}|{file_stamp(path)}|{target}\n".encode())
    return h.hexdigest()[:16]


def check_dataset(
    cfg: DataConfig,
    splits: tuple[str, ...] = SPLITS,
    workers: int | None = None,
    kind: str = CHECK_KIND,
) -> DataCheck:
    """Check ``splits`` of the dataset in one pass; raise one DataError listing every problem.

    Layout, label files (header, targets, duplicates, path traversal), missing files, images that do
    not decode, single-class and empty splits are all checked before the error is raised.
    """
    workers = workers or available_cpus()
    problems: list[str] = []
    summary: dict[str, dict[str, int]] = {}
    skipped: list[tuple[str, str, str]] = []
    fingerprints: dict[str, str] = {}
    exclude = {k: list(v) for k, v in cfg.exclude.items()}
    digests: dict[str, dict[str, str]] = {}
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root {root} does not exist (or is not a folder); check --data or data.root, or "
            "write a demo dataset there first with ffdi-tune demo-data DIR"
        )
    if cache_dir_of(cfg) is not None:
        check_writable(
            cache_dir_of(cfg),
            "the decode cache",
            "point data.cache_dir (or FFDI_TUNE_CACHE) at a writable folder, or pass --no-cache",
        )
    for name in splits:
        split, scan_problems = scan_split(cfg, name)
        problems += scan_problems
        if split is None:
            continue
        undecodable, found = _scan(split, cache_dir_of(cfg), workers, kind)
        split = _without_undecodable(split, undecodable, cfg, problems, skipped, exclude)
        digests[name] = {n: found[n] for n in split.names}
        if split.targets is not None and len(split) and not scan_problems:
            single = single_class_problem(split)
            if single:
                problems.append(single)
        summary[name] = _counts(split)
        if not problems:
            fingerprints[name] = fingerprint(split)
    overlaps = _overlaps(digests)
    if problem := _overlap_problem(overlaps, cfg):
        problems.append(problem)
    if problems:
        raise DataError(problems_message(problems))
    shared = {f"{a}-{b}": len(pairs) for (a, b), pairs in overlaps.items()}
    data = cfg.model_copy(update={"exclude": exclude})
    return DataCheck(data, summary, skipped, fingerprints, shared)


def _without_undecodable(
    split: Split,
    undecodable: dict[str, str],
    cfg: DataConfig,
    problems: list[str],
    skipped: list[tuple[str, str, str]],
    exclude: dict[str, list[str]],
) -> Split:
    """``split`` less the images that do not decode: each a problem, or with ``on_bad_image:
    skip`` (trainset, valset) left out, added to ``skipped`` and ``exclude``."""
    if not undecodable:
        return split
    name = split.name
    if cfg.on_bad_image == "skip" and name != "test":
        skipped += [(name, n, why) for n, why in undecodable.items()]
        exclude.setdefault(name, []).extend(undecodable)
    else:
        hint = "" if name == "test" else " (or set data.on_bad_image: skip to leave it out)"
        where = dict(zip(split.names, split.paths, strict=True))
        problems += [
            f"{where[n]}: {why}; replace or remove the file{hint}" for n, why in undecodable.items()
        ]
    split = split.without(undecodable)
    if not len(split) and cfg.on_bad_image == "skip":
        problems.append(
            f"split {name}: none of its {len(undecodable)} image(s) decodes; replace them or "
            "fix data.root"
        )
    return split


def _counts(split: Split) -> dict[str, int]:
    """The number of images of ``split``, and of fake and real ones when it is labelled."""
    if split.targets is None:
        return {"images": len(split)}
    n_fake = int(split.targets.sum())
    return {"images": len(split), "fake": n_fake, "real": len(split) - n_fake}
