"""What a search recorded in MLflow, read back for the final stage: its resolved YAML, data
section, perturbation recipe, data root, valset split and data fingerprints.

The final stage runs from the tracking store alone, right after a search or later on another
machine, so everything it needs to redo the search's choices the same way comes from here.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from ffdi_tune import tracking
from ffdi_tune.config import format_validation_error
from ffdi_tune.data.check import DataCheck
from ffdi_tune.data.holdout import unrecorded_split
from ffdi_tune.data.perturb import RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import ConfigError, DataError
from ffdi_tune.tracking import DATA_ROOT, Tracker

__all__ = [
    "search_config",
    "search_data",
    "search_robust_val",
    "recorded_data_root",
    "recorded_holdout",
    "check_data_unchanged",
]


def search_config(tracker: Tracker, experiment: str) -> dict:
    """The resolved YAML the search ``experiment`` ran with, parsed (empty when none is logged)."""
    text = tracker.search_config_text(experiment)
    raw = yaml.safe_load(text) if text else None
    return raw if isinstance(raw, dict) else {}


def search_data(config: dict, root: str, on_bad_image: str = "error") -> DataConfig:
    """The data section of a search's ``config`` (layout names, exclusions), at ``root``; the
    defaults when the section does not validate."""
    section = config.get("data") if isinstance(config.get("data"), dict) else {}
    # The demo generator and a cache folder belong to the machine that searched, not this one.
    keep = {k: v for k, v in section.items() if k not in ("root", "demo", "cache_dir")}
    try:
        return DataConfig.model_validate({"on_bad_image": on_bad_image, **keep, "root": root})
    except ValidationError:
        return DataConfig(root=root, on_bad_image=on_bad_image)


def search_robust_val(config: dict, experiment: str) -> RobustValConfig:
    """The perturbation recipe the search ``experiment`` (its ``config``) scored with, enabled; the
    default recipe when none is recorded."""
    recorded = config.get("robust_val")
    try:
        recipe = (
            RobustValConfig.model_validate(recorded)
            if isinstance(recorded, dict)
            else RobustValConfig()
        )
    except ValidationError as exc:
        raise ConfigError(
            f"search {experiment!r}: {format_validation_error('robust_val', exc)}; rank with "
            "metric val_auc, or rerun the search with a valid robust_val"
        ) from None
    return recipe.model_copy(update={"enabled": True})


def recorded_data_root(tags: dict[str, str], experiment: str) -> str:
    """The data root the search ``experiment`` (its run's ``tags``) recorded."""
    root = tags.get(DATA_ROOT)
    if root is None:
        raise ConfigError(f"no data root is recorded for search {experiment!r}; pass --data DIR")
    return root


def recorded_holdout(searches: dict[str, dict[str, str]]) -> tuple[float, int, str]:
    """(fraction, seed, report hash) of the valset split the pooled searches (name -> their run's
    tags) share.

    Searches whose splits differ cannot be pooled honestly (one's report part may be another's
    selection part): that is a one-line error. A search that recorded no split (made by an older
    version, which chose on all of valset) counts as ``fraction 0``.
    """
    recorded = {
        name: tracking.holdout_from_tags(t) or unrecorded_split() for name, t in searches.items()
    }
    splits = {name: (s["fraction"], s["seed"], s["report_hash"]) for name, s in recorded.items()}
    first, (fraction, seed, digest) = next(iter(splits.items()))
    for name, (f, sd, h) in splits.items():
        if h != digest:
            raise ConfigError(
                f"searches {first!r} and {name!r} split valset differently (fraction {fraction:g} "
                f"seed {seed}, report part {digest}; fraction {f:g} seed {sd}, report part {h}), "
                "so neither report part is unseen by the other's trials; ensemble them "
                "separately, or rerun one with the other's search.holdout"
            )
    return fraction, seed, digest


def check_data_unchanged(check: DataCheck, searches: dict[str, dict[str, str]]) -> None:
    """Refuse val/test files that changed since a search at the same root fingerprinted them."""
    here = Path(check.data.root).resolve()
    for name, t in searches.items():
        if not t.get(DATA_ROOT) or Path(t[DATA_ROOT]).resolve() != here:
            continue  # another root is scored on purpose
        for split in ("val", "test"):
            then, now = (
                t.get(f"{tracking.FINGERPRINT_PREFIX}{split}"),
                check.fingerprints.get(split),
            )
            if then and now and then != now:
                raise DataError(
                    f"{split}set in {here} changed since search {name!r} ran (images added, "
                    f"removed, rewritten or relabelled: fingerprint {then} then, {now} now); "
                    "restore it, or pass --allow-changed-data to score the files as they are now"
                )
