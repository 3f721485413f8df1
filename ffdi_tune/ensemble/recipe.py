"""Ensemble recipes (``ensembles/*.yaml``): which trials, how to combine them, which TTA views.

::

    top_k: 5                  # members (for greedy: the pool it picks from, with replacement)
    metric: val_auc           # ranks candidates, on the selection part of valset; val_robust_auc or
                              # val_worst_auc rank (and choose views, weights and the combination)
                              # on the perturbed copy of valset, or on the lower of the two AUCs
    combine: auto             # auto, or a registered method: best | mean | rank | greedy
    average: prob             # prob | logit: what mean and greedy average
    # views averaged per member; tta_select keeps them only where they help
    tta: [identity, hflip]

``combine`` is checked against the registry of :mod:`ffdi_tune.ensemble.methods`.

The valset split into a selection and a report part is the search's (``search.holdout``), not
the recipe's: the final stage reuses it, so the report part stays unseen by everything.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ffdi_tune.config import format_validation_error, read_yaml
from ffdi_tune.ensemble.methods import AUTO, check_combine
from ffdi_tune.errors import ConfigError
from ffdi_tune.scoring.epoch_metrics import check_metric
from ffdi_tune.scoring.tta import check_views
from ffdi_tune.strict import StrictModel

__all__ = ["EnsembleRecipe", "CandidateFilter", "RefitSettings", "load_recipe"]

_MOVED = ("holdout_fraction", "seed")  # keys of older recipes that now belong to the search


class CandidateFilter(StrictModel):
    """Which trials may join: FINISHED runs with a checkpoint that ran at least min_epochs.

    ``pool`` caps how many of them the final stage scores (each one is a pass over valset and
    testset per TTA view): the best ``pool`` by the best value their search logged for the
    recipe's metric, which is on the selection part of valset. Default 3 x top_k; 0 scores all.
    """

    min_epochs: int = Field(1, ge=1)
    include_stopped: bool = True  # trials ASHA stopped early (FINISHED, ffdi.stopped_early=true)
    pool: int | None = Field(None, ge=0)


class RefitSettings(StrictModel):
    """Train each shipped member's configuration again, ``seeds`` times with new seeds, for its
    best epoch count, on trainset plus the selection part of valset; the refits ship in its place
    (:mod:`ffdi_tune.ensemble.refit`)."""

    seeds: int = Field(1, ge=1)


class EnsembleRecipe(StrictModel):
    experiments: list[str] = []  # default: the search that runs the recipe, or --experiment
    top_k: int = Field(5, ge=1)
    # val_robust_auc / val_worst_auc: views, ranking, weights on the perturbed valset
    metric: str = "val_auc"
    candidates: CandidateFilter = CandidateFilter()
    # auto builds every registered combination and ships the best on the selection part
    combine: str = AUTO
    # for methods that use it (mean, greedy): average probabilities or log-odds
    average: Literal["prob", "logit"] = "prob"
    tta: list[str] = ["identity", "hflip"]
    tta_select: bool = True
    output: str | None = None  # default runs/<first experiment>/submission.csv
    batch_size: int = Field(64, ge=1)
    refit: RefitSettings | None = None

    _known_metric = field_validator("metric")(lambda v: check_metric(v))
    _known_combine = field_validator("combine")(lambda v: check_combine(v))

    @model_validator(mode="after")
    def _pool_holds_top_k(self) -> EnsembleRecipe:
        pool = self.candidates.pool
        if pool and pool < self.top_k:
            raise ValueError(
                f"candidates.pool={pool} is smaller than top_k={self.top_k}; raise pool to at "
                "least top_k, or 0 to score every qualifying trial"
            )
        return self

    @model_validator(mode="after")
    def _refit_needs_trained_members(self) -> EnsembleRecipe:
        if self.refit is not None and self.combine == "soup":
            raise ValueError(
                "refit trains each member again; a weight soup is an average of members, not one "
                "to refit: use another combine (with auto, soups are left out under refit)"
            )
        return self

    @property
    def pool_size(self) -> int | None:
        """How many qualifying trials the final stage scores (None: every one)."""
        pool = self.candidates.pool
        return 3 * self.top_k if pool is None else (pool or None)

    @model_validator(mode="before")
    @classmethod
    def _split_belongs_to_the_search(cls, data: Any) -> Any:
        moved = [k for k in _MOVED if isinstance(data, dict) and k in data]
        if moved:
            raise ValueError(
                f"{' and '.join(moved)} no longer {'belongs' if len(moved) == 1 else 'belong'} in "
                "a recipe: the ensemble reuses the valset split its search fixed before it "
                "started (search.holdout: {fraction, seed} in the search-space YAML); remove "
                f"{', '.join(moved)} from the recipe"
            )
        return data

    @field_validator("tta")
    @classmethod
    def _known_views(cls, v: list[str]) -> list[str]:
        return check_views(v)

    @property
    def passes_per_image(self) -> int:
        """How many times the final stage scores each valset and testset image with each member;
        with ``soup`` or ``auto`` one pass more per member, for the greedy soup's tries and the
        soup's own scoring (an upper bound: each try reads the selection part only)."""
        from ffdi_tune.scoring.epoch_metrics import robust_metrics

        passes = len(self.tta) * (2 if self.metric in robust_metrics() else 1)
        return passes + (1 if self.soups else 0)

    @property
    def soups(self) -> bool:
        """Whether the final stage makes weight soups (``soup``, or ``auto`` without a refit)."""
        return self.combine == "soup" or (self.combine == AUTO and self.refit is None)


def load_recipe(path: str | os.PathLike) -> EnsembleRecipe:
    """Load and validate a recipe; errors are one-line ConfigErrors naming the file and key."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the file must hold a mapping of keys, but got {type(raw).__name__}"
        )
    try:
        return EnsembleRecipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None
