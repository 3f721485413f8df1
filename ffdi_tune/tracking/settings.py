"""The ``tracking:`` section of a search space: which MLflow store a search writes to."""

from __future__ import annotations

from ffdi_tune.strict import StrictModel

__all__ = ["TrackingConfig"]


class TrackingConfig(StrictModel):
    """MLflow store. ``uri`` falls back to $MLFLOW_TRACKING_URI, then sqlite:///runs/mlflow.db."""

    uri: str | None = None
    artifact_location: str | None = None
