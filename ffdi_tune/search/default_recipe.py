"""The default recipe: the search's first trial, a known-good configuration the rest must beat.

A search can then only add to one well-run recipe. The recipe is the space's first backbone with,
for every searched key, the value written under ``train:`` when the space allows it (that is where
a user writes the recipe they trust), else the middle of the searched range (geometric for log
ranges) or the first choice. It is enqueued into Optuna before TPE proposes anything, so TPE
learns from it like from any other trial, and the final stage always counts it among its
candidates.

>>> from ffdi_tune.config import parse_search_config
>>> cfg = parse_search_config({"name": "d", "data": {"root": "x"}, "train": {"lr": 1e-3},
...     "space": {"lr": {"loguniform": [1e-4, 1e-2]}, "gamma": {"uniform": [0.2, 0.4]}}})
>>> default_point(cfg)
{'lr': 0.001, 'gamma': 0.30000000000000004}
"""

from __future__ import annotations

import json
import math
from typing import Any

from ffdi_tune.config import Domain, SearchConfig
from ffdi_tune.search.space import CONDITIONAL_SEP

__all__ = ["default_point"]


def _value_in(domain: Domain, preferred: Any) -> Any:
    """``preferred`` when ``domain`` holds it, else the domain's middle (first choice)."""
    kind = domain.kind
    if kind == "choice":
        labels = [json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for v in domain.choice]
        wanted = json.dumps(list(preferred)) if isinstance(preferred, (list, tuple)) else preferred
        return labels[labels.index(wanted)] if wanted in labels else labels[0]
    low, high = getattr(domain, kind)
    if preferred is not None and not isinstance(preferred, bool):
        try:
            if low <= float(preferred) <= high:
                return int(preferred) if kind in ("int", "logint") else float(preferred)
        except (TypeError, ValueError):
            pass
    if kind in ("loguniform", "logint"):
        middle = math.sqrt(low * high)
    else:
        middle = (low + high) / 2
    return int(round(middle)) if kind in ("int", "logint") else middle


def default_point(cfg: SearchConfig) -> dict[str, Any]:
    """Optuna parameters (names as :class:`~ffdi_tune.search.space.DefineByRun` suggests them) of
    the default recipe."""
    fixed = cfg.train.model_dump()
    backbone = cfg.backbones()[0]
    overrides = cfg.per_backbone.get(backbone, {})
    point: dict[str, Any] = {}
    if "backbone" in cfg.space:
        point["backbone"] = _value_in(cfg.space["backbone"], backbone)
    for key, domain in cfg.space.items():
        if key != "backbone" and key not in overrides:
            point[key] = _value_in(domain, fixed.get(key))
    for key, value in overrides.items():
        if isinstance(value, Domain):
            point[f"{key}{CONDITIONAL_SEP}{backbone}"] = _value_in(value, fixed.get(key))
    return point
