"""Turn a validated search space into Optuna's define-by-run function and back into settings.

Per-backbone values are conditional: a searched override is suggested under the name
``"<key>:<backbone>"`` so that TPE keeps a separate model of, say, the learning rate of each
backbone; a constant override joins the trial's config directly. :func:`trial_settings` folds
both back into one :class:`~ffdi_tune.config.TrainSettings`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ffdi_tune.config import Domain, SearchConfig
from ffdi_tune.training.settings import TrainSettings

__all__ = [
    "DefineByRun",
    "suggest",
    "trial_settings",
    "trial_seed",
    "CONDITIONAL_SEP",
    "DEFAULT_RECIPE_KEY",
    "CONTINUE_FROM_KEY",
    "CONTINUED_TRIAL_KEY",
    "MARKER_KEYS",
]

CONDITIONAL_SEP = ":"
# Marks the default recipe: an Optuna user attribute of the enqueued trial, then a key of the
# trial's config (not a training setting) that tags its run
DEFAULT_RECIPE_KEY = "default_recipe"
# A trial that trains another one further: that trial's checkpoint (a path or URI) and its id
CONTINUE_FROM_KEY, CONTINUED_TRIAL_KEY = "continue_from", "continued_from"
MARKER_KEYS = (DEFAULT_RECIPE_KEY, CONTINUE_FROM_KEY, CONTINUED_TRIAL_KEY)


def suggest(trial: Any, name: str, domain: Domain) -> Any:
    """Ask an Optuna trial (or Ray's captor of one) for a value of ``domain``."""
    kind = domain.kind
    if kind == "choice":
        # Optuna's categorical values are scalars; a list (a range such as jpeg_quality's) is
        # offered as its JSON text, which the setting's validator reads back.
        return trial.suggest_categorical(
            name,
            [json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for v in domain.choice],
        )
    low, high = getattr(domain, kind)
    if kind == "uniform":
        return trial.suggest_float(name, low, high)
    if kind == "loguniform":
        return trial.suggest_float(name, low, high, log=True)
    if kind == "int":
        return trial.suggest_int(name, low, high)
    if kind == "logint":
        return trial.suggest_int(name, low, high, log=True)
    raise ValueError(
        f"unknown domain kind {kind!r}; valid kinds are choice, uniform, loguniform, int, logint"
    )


class DefineByRun:
    """Picklable ``fn(trial)`` for ``OptunaSearch(space=fn)``; returns the constant overrides."""

    def __init__(
        self,
        space: dict[str, Domain],
        per_backbone: dict[str, dict[str, Any]],
        backbone: str,
        seed_base: int | None = None,
    ):
        self.space = dict(space)
        self.per_backbone = {k: dict(v) for k, v in per_backbone.items()}
        self.fixed_backbone = backbone
        self.seed_base = seed_base  # give each trial its own seed, derived from this and its number

    @classmethod
    def from_config(cls, cfg: SearchConfig) -> DefineByRun:
        fixed = (
            cfg.train.seed is not None
            or "seed" in cfg.space
            or any("seed" in o for o in cfg.per_backbone.values())
        )
        return cls(
            cfg.space, cfg.per_backbone, cfg.train.backbone, None if fixed else cfg.search.seed
        )

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        if "backbone" in self.space:
            backbone = suggest(trial, "backbone", self.space["backbone"])
        else:
            backbone = self.fixed_backbone
        overrides = self.per_backbone.get(backbone, {})
        constants: dict[str, Any] = {}
        for key, domain in self.space.items():
            if key != "backbone" and key not in overrides:
                suggest(trial, key, domain)
        for key, value in overrides.items():
            if isinstance(value, Domain):
                suggest(trial, f"{key}{CONDITIONAL_SEP}{backbone}", value)
            else:
                constants[key] = value
        if self.seed_base is not None:
            constants["seed"] = trial_seed(self.seed_base, trial.number)
        if trial.user_attrs.get(DEFAULT_RECIPE_KEY):
            constants[DEFAULT_RECIPE_KEY] = True
        return constants or None


def trial_seed(search_seed: int, number: int) -> int:
    """The seed of the ``number``-th trial (0, 1, ...) of a search seeded ``search_seed``: distinct
    per trial, the same on every run of the same search.

    >>> trial_seed(0, 0) != trial_seed(0, 1)
    True
    """
    return int(np.random.SeedSequence([search_seed, number]).generate_state(1)[0])


def trial_settings(fixed: TrainSettings | dict[str, Any], config: dict[str, Any]) -> TrainSettings:
    """Merge a trial's sampled ``config`` over the fixed settings.

    >>> trial_settings({"backbone": "resnet10t"}, {"lr:resnet10t": 0.01}).lr
    0.01
    """
    base = fixed.model_dump() if isinstance(fixed, TrainSettings) else dict(fixed)
    for key, value in config.items():
        if key not in MARKER_KEYS:
            base[key.split(CONDITIONAL_SEP, 1)[0]] = value
    return TrainSettings.model_validate(base)
