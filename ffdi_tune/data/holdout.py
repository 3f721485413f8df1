"""The one split of valset a search fixes before it starts: a selection part and a report part.

Everything that chooses (ASHA, TPE, each trial's best epoch, TTA views, ensemble members and
weights) sees only the *selection* part; the *report* part is scored once, by the final stage,
and that number is the estimate users are shown. The split is stratified and seeded, and
identified by a hash of the report part's image names, which the search run records
(``ffdi.holdout.*`` tags) so that the final stage, a resume, or a pooled ensemble can check it is
the same one.

>>> h = split_valset(split, fraction=0.5, seed=0)   # doctest: +SKIP
>>> len(h.select_names), len(h.report_names)         # doctest: +SKIP
(200, 200)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from ffdi_tune.data.layout import Split
from ffdi_tune.errors import DataError

__all__ = [
    "Holdout",
    "split_valset",
    "report_hash",
    "NO_REPORT_HASH",
    "unrecorded_split",
    "HOLDOUT_FILE",
    "REPORT_NAMES_FILE",
    "report_names_json",
    "legacy_report_hash",
    "split_from_report_names",
    "save_holdout",
    "saved_holdout",
]

NO_REPORT_HASH = "none"  # fraction 0: every valset image selects, nothing is kept for the report


def unrecorded_split() -> dict:
    """The split of a search that recorded none (made by a version that chose on all of valset):
    ``fraction 0``, in the form of :func:`saved_holdout`."""
    return {"fraction": 0.0, "seed": 0, "report_hash": NO_REPORT_HASH}


def report_hash(names) -> str:
    """A short hash of a set of image names (order does not matter), of their sorted JSON list: an
    unambiguous encoding, whatever characters the names hold."""
    if not len(names):
        return NO_REPORT_HASH
    return hashlib.sha256(report_names_json(names).encode()).hexdigest()[:16]


def legacy_report_hash(names) -> str:
    """The report hash searches recorded before it hashed a JSON list (names joined by newlines),
    so that they still resume and ensemble."""
    if not len(names):
        return NO_REPORT_HASH
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(f"{name}\n".encode())
    return h.hexdigest()[:16]


def report_names_json(names) -> str:
    """The sorted image names as JSON: what a search records of its report part."""
    return json.dumps(sorted(names), ensure_ascii=False)


@dataclass(frozen=True)
class Holdout:
    """A valset split: the names of each part, and what identifies it."""

    fraction: float
    seed: int
    select_names: tuple[str, ...]
    report_names: tuple[str, ...]

    @property
    def report_hash(self) -> str:
        return report_hash(self.report_names)

    def matches(self, recorded_hash: str) -> bool:
        """Whether ``recorded_hash`` (as a search recorded it, now or before) names this split."""
        return recorded_hash in (self.report_hash, legacy_report_hash(self.report_names))

    @property
    def honest(self) -> bool:
        """Whether a report part exists, i.e. whether there is an estimate nothing chose on."""
        return bool(self.report_names)

    def indices(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(selection, report) positions in ``names`` (a valset's image names, in its order)."""
        report = set(self.report_names)
        is_report = np.array([n in report for n in names], dtype=bool)
        return np.flatnonzero(~is_report), np.flatnonzero(is_report)


def split_valset(split: Split, fraction: float, seed: int) -> Holdout:
    """Split ``split`` (valset) into selection and report parts, stratified by target and seeded.

    ``fraction`` of the images (rounded as scikit-learn does) go to the report part; 0 keeps them
    all for selection. Each part must hold both classes, so that its AUC is defined.
    """
    names = np.asarray(split.names, dtype=object)
    if fraction == 0:
        return Holdout(0.0, seed, tuple(split.names), ())
    n_fake = int(split.targets.sum())
    if min(n_fake, len(split) - n_fake) < 2:
        raise DataError(
            f"search.holdout.fraction={fraction:g} needs at least 2 real and 2 fake valset images "
            f"to split, but valset has {len(split) - n_fake} real and {n_fake} fake; add images or "
            "set search.holdout.fraction: 0"
        )
    try:
        select, report = train_test_split(
            names, test_size=fraction, stratify=split.targets, random_state=seed
        )
    except ValueError as exc:
        raise DataError(
            f"search.holdout.fraction={fraction:g} cannot split valset's {len(split)} images "
            f"({exc}); use a fraction nearer 0.5 or add images"
        ) from None
    order = {n: i for i, n in enumerate(split.names)}  # each part keeps valset's own order
    return Holdout(
        float(fraction),
        seed,
        tuple(sorted(select, key=order.get)),
        tuple(sorted(report, key=order.get)),
    )


def split_from_report_names(
    split: Split, recorded: list[str], fraction: float, seed: int
) -> tuple[Holdout, int]:
    """``split`` (a valset that changed since a search) split by the report part the search
    recorded: its images still present form the report part, every other image (new ones too)
    the selection part; with how many recorded report images are gone."""
    kept = set(recorded)
    report = tuple(n for n in split.names if n in kept)
    select = tuple(n for n in split.names if n not in kept)
    return Holdout(float(fraction), seed, select, report), len(kept) - len(report)


HOLDOUT_FILE = "holdout.json"  # in a search's output folder: the split it started with
# on the search run, under holdout/: the report part's image names (report_names_json)
REPORT_NAMES_FILE = "report_names.json"


def save_holdout(folder: Path, holdout: Holdout) -> Path:
    """Record the split in ``folder`` (a search's output folder), for a later ``--resume``."""
    from ffdi_tune.files import write_atomic

    return write_atomic(
        Path(folder) / HOLDOUT_FILE,
        json.dumps(
            {
                "fraction": holdout.fraction,
                "seed": holdout.seed,
                "report_hash": holdout.report_hash,
                "select_images": len(holdout.select_names),
                "report_images": len(holdout.report_names),
            }
        ),
    )


def saved_holdout(folder: Path) -> dict | None:
    """The split recorded in ``folder``, or None."""
    path = Path(folder) / HOLDOUT_FILE
    return json.loads(path.read_text()) if path.is_file() else None
