"""The registry of per-epoch metrics: every name a trial reports, its direction, whether a search
may optimise it, and whether it needs the perturbed copy of valset.

A new metric is one :func:`register_metric` call here; the trial computes it, and the MLflow mirror
(``ffdi_tune.search.callbacks``), the YAML's ``search.metric`` check and the ensemble
recipe's ``metric`` check all read this registry.

>>> higher_is_better("val_loss"), best_value("val_auc", [0.8, 0.9])
(False, 0.9)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ffdi_tune.errors import did_you_mean

__all__ = [
    "EpochMetric",
    "register_metric",
    "epoch_metric_names",
    "optimisable_metrics",
    "robust_metrics",
    "metric_mode",
    "check_metric",
    "higher_is_better",
    "best_value",
    "is_better",
]


@dataclass(frozen=True)
class EpochMetric:
    """One metric a trial logs per epoch (step = epoch)."""

    name: str
    # "max" / "min": a score whose direction matters; None: a measurement (time, throughput)
    mode: Literal["max", "min"] | None = None
    optimisable: bool = False  # may be a search's or an ensemble recipe's ``metric``
    needs_perturbed: bool = False  # scored on the perturbed copy of valset (robust_val)


_REGISTRY: dict[str, EpochMetric] = {}


def register_metric(metric: EpochMetric) -> EpochMetric:
    """Add ``metric`` to the registry; a name registered twice is a programming error."""
    if metric.name in _REGISTRY:
        raise ValueError(f"epoch metric {metric.name!r} is registered twice")
    if metric.optimisable and metric.mode is None:
        raise ValueError(f"epoch metric {metric.name!r} can be optimised only with a mode")
    _REGISTRY[metric.name] = metric
    return metric


# val_* are scored on the selection part of valset (the search never reads the report part)
for _metric in (
    EpochMetric("val_auc", "max", optimisable=True),
    EpochMetric("val_tpr_at_fpr_0.001", "max", optimisable=True),
    EpochMetric("val_acc", "max", optimisable=True),
    EpochMetric("val_loss", "min", optimisable=True),
    EpochMetric("train_loss", "min"),
    EpochMetric("lr"),
    EpochMetric("epoch_time_s"),
    EpochMetric("train_images_per_s"),
    # AUC on the perturbed copy of valset (see robust_val), and the lower of it and val_auc
    EpochMetric("val_robust_auc", "max", optimisable=True, needs_perturbed=True),
    EpochMetric("val_worst_auc", "max", optimisable=True, needs_perturbed=True),
    EpochMetric("eval_time_s"),
    EpochMetric("data_wait_share"),
    EpochMetric("peak_accelerator_memory_mb"),  # on a GPU only
    EpochMetric("time_to_first_batch_s"),
    # with ema_decay or swa_epochs: val_auc of the raw, the EMA and (after the last epoch) the SWA
    # weights; val_auc is the kept one's
    EpochMetric("val_auc_raw", "max"),
    EpochMetric("val_auc_ema", "max"),
    EpochMetric("val_auc_swa", "max"),
):
    register_metric(_metric)


def epoch_metric_names() -> tuple[str, ...]:
    """Every registered per-epoch metric, in registration order."""
    return tuple(_REGISTRY)


def optimisable_metrics() -> tuple[str, ...]:
    """The metrics a search or an ensemble recipe may rank by."""
    return tuple(m.name for m in _REGISTRY.values() if m.optimisable)


def robust_metrics() -> tuple[str, ...]:
    """The metrics scored on the perturbed copy of valset."""
    return tuple(m.name for m in _REGISTRY.values() if m.needs_perturbed)


def check_metric(name: str) -> str:
    """A pydantic validator body: ``name`` must be an optimisable metric."""
    valid = optimisable_metrics()
    if name not in valid:
        raise ValueError(
            f"unknown metric {name!r}{did_you_mean(name, valid)}; valid metrics are "
            f"{', '.join(valid)}"
        )
    return name


def metric_mode(name: str) -> str:
    """``"max"`` or ``"min"``: Ray Tune's and Optuna's word for the metric's direction."""
    mode = _REGISTRY[name].mode
    if mode is None:
        raise ValueError(f"metric {name!r} is a measurement, not a score: it has no direction")
    return mode


def higher_is_better(name: str) -> bool:
    """The direction of ``name``: True for AUCs, TPR and accuracy, False for the losses."""
    return metric_mode(name) == "max"


def best_value(name: str, values: Iterable) -> float:
    """The best of ``values`` in the metric's direction (NaN when there are none).

    >>> best_value("val_loss", [0.4, 0.3]), best_value("val_auc", [0.8, 0.9])
    (0.3, 0.9)
    """
    values = [float(v) for v in values]
    if not values:
        return float("nan")
    return max(values) if higher_is_better(name) else min(values)


def is_better(name: str, value: float, than: float | None) -> bool:
    """Whether ``value`` of ``name`` beats ``than`` in the metric's direction (anything beats None).

    >>> is_better("val_loss", 0.3, 0.4), is_better("val_auc", 0.8, 0.9)
    (True, False)
    """
    if than is None:
        return True
    return value > than if higher_is_better(name) else value < than
