"""MLflow bookkeeping: one parent run per search, one child run per trial.

This is the only module that imports MLflow. It talks through an explicit ``MlflowClient`` (no
global active run), so the driver can track many trials at once and a resumed search finds its
runs again by tags instead of creating duplicates:

- parent: tags ``ffdi.role=search``, ``ffdi.search=<name>``; the resolved YAML as an artifact;
- child: tags ``ffdi.role=trial``, ``mlflow.parentRunId``, ``ffdi.trial_id``; every setting as a
  param; per-epoch metrics with ``step=epoch``; ``checkpoint/best.pt``; status FINISHED (also when
  ASHA stopped it, tagged ``ffdi.stopped_early=true``) or FAILED (tag ``ffdi.error``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ffdi_tune.config import TrackingConfig
from ffdi_tune.errors import TrackingError, did_you_mean

__all__ = ["DEFAULT_TRACKING_URI", "resolve_tracking", "Tracker"]

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per checkpoint otherwise
ROLE, SEARCH, TRIAL_ID = "ffdi.role", "ffdi.search", "ffdi.trial_id"
PARENT = "mlflow.parentRunId"
DATA_ROOT = "ffdi.data_root"  # on the search run: where its trials read their images


def resolve_tracking(cfg: TrackingConfig | None = None) -> tuple[str, str | None]:
    """(tracking URI, artifact location) from YAML, then $MLFLOW_TRACKING_URI, then the default.

    For a sqlite store the artifacts default to ``mlartifacts/`` beside the database file; for a
    server they default to the server's own artifact store (``None``).
    """
    cfg = cfg or TrackingConfig()
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    artifacts = cfg.artifact_location
    if uri.startswith("sqlite:///"):
        # Absolute, so that the store does not depend on (or get cached across) working directories.
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
        if artifacts is None:
            artifacts = (db.parent / "mlartifacts").resolve().as_uri()
    if artifacts and "://" not in artifacts:
        artifacts = Path(artifacts).resolve().as_uri()
    return uri, artifacts


class Tracker:
    """Thin, picklable wrapper over ``MlflowClient`` with the project's run layout."""

    def __init__(self, uri: str, artifact_location: str | None = None):
        self.uri, self.artifact_location = uri, artifact_location
        self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "artifact_location": self.artifact_location, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema set-up chatter
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # -- experiments and runs -------------------------------------------------------------
    def experiment_id(self, name: str, create: bool = True) -> str | None:
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            if not create:
                return None
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        except Exception as exc:
            if isinstance(exc, TrackingError):
                raise
            raise TrackingError(
                f"MLflow tracking store {self.uri} cannot be used ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); check tracking.uri or $MLFLOW_TRACKING_URI"
            ) from None

    def _find(self, experiment_id: str, query: str):
        runs = self.client.search_runs([experiment_id], filter_string=query, max_results=50,
                                       order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def search_run(self, experiment_id: str, name: str, resume: bool, config_yaml: str, data_root: str) -> str:
        """The parent run of search ``name``: the latest one when resuming, else a new one."""
        if resume:
            run = self._find(experiment_id, f"tags.`{ROLE}` = 'search' and tags.`{SEARCH}` = '{name}'")
            if run is not None:
                self.client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
        run = self.client.create_run(experiment_id, run_name=name,
                                     tags={ROLE: "search", SEARCH: name, DATA_ROOT: data_root})
        self.client.log_text(run.info.run_id, config_yaml, "search_space.yaml")
        return run.info.run_id

    def trial_run(self, experiment_id: str, parent_id: str, trial_id: str, params: dict[str, Any],
                  run_name: str | None = None) -> str:
        """The child run of ``trial_id`` (created once; found again after a resume or retry)."""
        query = f"tags.`{PARENT}` = '{parent_id}' and tags.`{TRIAL_ID}` = '{trial_id}'"
        run = self._find(experiment_id, query)
        if run is not None:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        run = self.client.create_run(
            experiment_id, run_name=run_name or trial_id,
            tags={ROLE: "trial", PARENT: parent_id, TRIAL_ID: trial_id},
        )
        from mlflow.entities import Param

        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
        return run.info.run_id

    def search_data_root(self, experiment_name: str) -> str | None:
        """The data root recorded on the latest search run of ``experiment_name``."""
        exp_id = self.experiment_id(experiment_name, create=False)
        run = self._find(exp_id, f"tags.`{ROLE}` = 'search'") if exp_id else None
        return run.data.tags.get(DATA_ROOT) if run else None

    def trial_runs(self, experiment_names: list[str]) -> list:
        """FINISHED trial runs of the named searches; an unknown name is a one-line error."""
        runs = []
        for name in experiment_names:
            exp_id = self.experiment_id(name, create=False)
            if exp_id is None:
                known = [e.name for e in self.client.search_experiments()]
                raise TrackingError(
                    f"experiment {name!r} not found in {self.uri}{did_you_mean(name, known)}; run the search "
                    "first, or pass the name of a finished one with --experiment")
            runs += self.client.search_runs(
                [exp_id], filter_string=f"tags.`{ROLE}` = 'trial' and attributes.status = 'FINISHED'",
                max_results=10000)
        return runs

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Fetch one artifact of a run into ``dst``; a missing one is a one-line error."""
        try:
            return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))
        except Exception as exc:
            raise TrackingError(
                f"run {run_id} has no readable artifact {artifact_path} ({type(exc).__name__}); "
                "leave that trial out or rerun it") from None

    def ensemble_run(self, experiment_id: str, name: str, parent_id: str | None, params: dict[str, Any],
                     metrics: dict[str, float], artifacts: list[Path]) -> str:
        """One finished run (tag ffdi.role=ensemble) holding an ensemble's recipe, scores and files."""
        from mlflow.entities import Metric, Param

        tags = {ROLE: "ensemble"}
        if parent_id:
            tags[PARENT] = parent_id
        run = self.client.create_run(experiment_id, run_name=name, tags=tags)
        now = int(time.time() * 1000)
        self.client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())],
        )
        for path in artifacts:
            self.client.log_artifact(run.info.run_id, str(path))
        self.finish(run.info.run_id)
        return run.info.run_id

    def children(self, experiment_id: str, parent_id: str) -> list:
        return self.client.search_runs([experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_id}'",
                                       max_results=10000)

    # -- logging --------------------------------------------------------------------------
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def close_unfinished(self, experiment_id: str, parent_id: str, status: str = "KILLED") -> int:
        """Mark every child still RUNNING as ``status``; return how many there were."""
        n = 0
        for run in self.children(experiment_id, parent_id):
            if run.info.status == "RUNNING":
                self.finish(run.info.run_id, status)
                n += 1
        return n
