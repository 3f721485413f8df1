"""The registry of combination methods: one registration per value of a recipe's ``combine:``.

A method turns the pool (the top ``top_k`` members, ranked on the selection part of valset) into
weights and the scale they are averaged on. Each is one function decorated with
:func:`register_method`, in the style of timm's ``register_model``; everything else reads the
registry:

- :func:`method_names` lists what ``combine:`` accepts besides ``auto``, and :func:`check_combine`
  (the recipe's validator) refuses anything else with a did-you-mean;
- :func:`build_combinations` builds every method's combinations, in the order ``combine: auto``
  breaks ties in: registration order, simpler first (:func:`combination_names`). A method
  registered with ``uses_average`` gives two, ``NAME`` on probabilities and ``NAME-logit`` on
  log-odds;
- :func:`requested_combination` names the one an explicit ``combine`` (and ``average``) ships.

The built-in methods:

- ``best``: the single member best on the selection part;
- ``mean`` / ``mean-logit``: the mean of the members' probabilities / log-odds;
- ``rank``: the mean of their normalised ranks;
- ``greedy`` / ``greedy-logit``: Caruana forward selection with replacement, on either average;
- ``soup``: the best greedy weight soup (:mod:`ffdi_tune.ensemble.soup`), one model; without a
  soup of two or more members, the best member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ffdi_tune.errors import did_you_mean
from ffdi_tune.scoring.combine import AVERAGES, SCALES, greedy_select
from ffdi_tune.scoring.epoch_metrics import robust_metrics

__all__ = [
    "AUTO",
    "COMBINATIONS",
    "Pool",
    "Fitted",
    "CombineMethod",
    "Combination",
    "register_method",
    "method_names",
    "combination_names",
    "check_combine",
    "requested_combination",
    "build_combinations",
]

AUTO = "auto"  # combine: auto builds every combination and ships the best on the selection part
_PLAIN_AVERAGE = "prob"  # the average a combination's bare name means; others add "-<average>"


@dataclass(frozen=True)
class Pool:
    """What a method chooses from: the pool's members, best-ranked first, and their log-odds on
    valset with the views each one uses. Only the ``select`` positions may be looked at."""

    members: tuple[str, ...]
    best: str  # the member best on the selection part by the recipe's metric
    val: Mapping[str, np.ndarray]  # member -> log-odds on all of valset
    val_perturbed: Mapping[str, np.ndarray]  # the same on the perturbed copy (empty: not scored)
    select: np.ndarray  # valset positions of the selection part
    targets: np.ndarray  # their labels
    metric: str  # the recipe's metric: what choosing maximises
    soups: tuple[str, ...] = ()  # weight soups of members (one model each), best first


class Fitted(NamedTuple):
    """A method's choice: the members it keeps and their weights, and the scale they average on."""

    weights: dict[str, float]  # member -> weight > 0, in pool order; the weights sum to 1
    scale: str  # a key of :data:`~ffdi_tune.scoring.combine.SCALES`


@dataclass(frozen=True)
class CombineMethod:
    """One registered method: ``fit(pool, average)`` (average is ``prob`` or ``logit`` when it
    ``uses_average``, else None) and its table label, a format string of ``n`` (members), ``s``
    (``"s"`` when more than one) and ``average`` (what the weights average, in words)."""

    name: str
    fit: Callable[[Pool, str | None], Fitted]
    uses_average: bool
    label: str

    def variants(self) -> dict[str, str | None]:
        """Combination name -> the average it uses, in the order they are built."""
        if not self.uses_average:
            return {self.name: None}
        return {self.variant(average): average for average in AVERAGES}

    def variant(self, average: str) -> str:
        """The name of this method's combination on ``average``."""
        if not self.uses_average or average == _PLAIN_AVERAGE:
            return self.name
        return f"{self.name}-{average}"


_REGISTRY: dict[str, CombineMethod] = {}


def register_method(
    name: str, *, label: str, uses_average: bool = False
) -> Callable[[Callable[[Pool, str | None], Fitted]], Callable[[Pool, str | None], Fitted]]:
    """Register the decorated ``fit(pool, average) -> Fitted`` as the method ``name``."""

    def register(fit: Callable[[Pool, str | None], Fitted]) -> Callable[[Pool, str | None], Fitted]:
        if name == AUTO or name in _REGISTRY:
            raise ValueError(f"combination method {name!r} is already taken")
        _REGISTRY[name] = CombineMethod(name, fit, uses_average, label)
        return fit

    return register


def method_names() -> tuple[str, ...]:
    """The registered methods, in registration order: what ``combine:`` accepts besides auto."""
    return tuple(_REGISTRY)


def combination_names() -> tuple[str, ...]:
    """Every combination :func:`build_combinations` builds, in the order auto breaks ties in."""
    return tuple(name for method in _REGISTRY.values() for name in method.variants())


def check_combine(value: str) -> str:
    """A pydantic validator body: ``value`` must be ``auto`` or a registered method."""
    valid = (AUTO, *_REGISTRY)
    if value not in valid:
        quoted = [repr(v) for v in valid]
        raise ValueError(
            f"unknown combine method {value!r}{did_you_mean(value, valid)}; valid values are "
            f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        )
    return value


def requested_combination(combine: str, average: str) -> str | None:
    """The combination an explicit ``combine`` ships with ``average`` (None for auto)."""
    if combine == AUTO:
        return None
    return _method(combine).variant(average)


def _method(name: str) -> CombineMethod:
    check_combine(name)
    return _REGISTRY[name]


@dataclass(frozen=True)
class Combination:
    """Members and weights (summing to 1), and the scale they are averaged on."""

    name: str  # one of combination_names()
    members: tuple[str, ...]
    weights: tuple[float, ...]
    scale: str  # "prob", "logit" or "rank"

    def score(self, per_member: Mapping[str, np.ndarray]) -> np.ndarray:
        """The combined score of per-member log-odds (higher = more likely fake), on ``scale``."""
        stacked = np.stack([per_member[m] for m in self.members])
        combiner, _ = SCALES[self.scale]
        return combiner(stacked, np.array(self.weights))

    def label(self) -> str:
        """What the table shows for it, e.g. ``mean of 5 probabilities``."""
        method = next(m for m in _REGISTRY.values() if self.name in m.variants())
        n = len(self.members)
        return method.label.format(n=n, s="s" if n > 1 else "", average=SCALES[self.scale][1])


def build_combinations(pool: Pool) -> list[Combination]:
    """Every registered method's combinations of ``pool``, in :func:`combination_names` order."""
    combinations = []
    for method in _REGISTRY.values():
        for name, average in method.variants().items():
            weights, scale = method.fit(pool, average)
            combinations.append(Combination(name, tuple(weights), tuple(weights.values()), scale))
    return combinations


def _equal(members: tuple[str, ...]) -> dict[str, float]:
    return {m: 1.0 / len(members) for m in members}


@register_method("best", label="best member")
def _best(pool: Pool, average: str | None) -> Fitted:
    return Fitted({pool.best: 1.0}, "logit")


@register_method("mean", label="mean of {n} {average}", uses_average=True)
def _mean(pool: Pool, average: str | None) -> Fitted:
    return Fitted(_equal(pool.members), average)


@register_method("rank", label="rank average of {n}")
def _rank(pool: Pool, average: str | None) -> Fitted:
    return Fitted(_equal(pool.members), "rank")


@register_method("greedy", label="greedy: {n} member{s}, {average}", uses_average=True)
def _greedy(pool: Pool, average: str | None) -> Fitted:
    """Caruana selection on the selection part, on the valset(s) the recipe's metric reads."""
    sets = np.stack([pool.val[m][pool.select] for m in pool.members])
    if pool.metric in robust_metrics():
        perturbed = np.stack([pool.val_perturbed[m][pool.select] for m in pool.members])
        sets = perturbed if pool.metric == "val_robust_auc" else np.stack([sets, perturbed])
    counts = greedy_select(sets, pool.targets, average)
    chosen = [(m, float(k)) for m, k in zip(pool.members, counts, strict=True) if k > 0]
    total = sum(k for _, k in chosen)
    return Fitted({m: k / total for m, k in chosen}, average)


@register_method("soup", label="greedy soup: one model")
def _soup(pool: Pool, average: str | None) -> Fitted:
    return Fitted({pool.soups[0] if pool.soups else pool.best: 1.0}, "logit")


# The built-in combinations, in the order auto breaks ties in (all registered above).
COMBINATIONS = combination_names()
