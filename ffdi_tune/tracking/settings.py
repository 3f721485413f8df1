"""The ``tracking:`` section of a search space: which MLflow store a search writes to."""

from __future__ import annotations

from pydantic import Field

from ffdi_tune.strict import StrictModel

__all__ = ["TrackingConfig"]


class TrackingConfig(StrictModel):
    """MLflow store. ``uri`` falls back to $MLFLOW_TRACKING_URI, then sqlite:///runs/mlflow.db.

    ``system_metrics`` samples CPU, memory, disk, network (and GPU, with ``nvidia-ml-py``) where
    each trial runs, every ``system_metrics_interval_s`` seconds, onto its run's ``system/``
    metrics (:mod:`~ffdi_tune.tracking.system`).
    """

    uri: str | None = None
    artifact_location: str | None = None
    system_metrics: bool = True
    system_metrics_interval_s: float = Field(10.0, gt=0)
