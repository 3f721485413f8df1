"""MLflow bookkeeping: one parent run per search, one child run per trial, a run per ensemble.

This module talks to MLflow's store. It talks through an explicit ``MlflowClient`` (no
global active run), so the driver can track many trials at once and a resumed search finds its
runs again by tags instead of creating duplicates:

- parent: tags ``ffdi.role=search``, ``ffdi.search=<name>``, ``ffdi.data_root``; the resolved YAML
  as an artifact;
- child: tags ``ffdi.role=trial``, ``mlflow.parentRunId``, ``ffdi.trial_id``; every setting as a
  param; per-epoch metrics with ``step=epoch``; ``checkpoint/best.pt``; status FINISHED (also when
  ASHA stopped it, tagged ``ffdi.stopped_early=true``) or FAILED (tag ``ffdi.error``);
- refit child: the same, tagged ``ffdi.role=refit`` and ``ffdi.refit_of=<trial run id>``;
- ensemble: tag ``ffdi.role=ensemble`` (and ``mlflow.parentRunId`` when there is a parent); the
  recipe as params, the scores as metrics, the submission, tables and figures as artifacts.

:class:`Tracker`, the one object the rest of the package uses, is built in three layers, one job
each: :class:`StoreReader` connects and reads runs back, :class:`StoreWriter` creates runs and makes
a journaled write in the store, and :class:`Tracker` sends every write through the spool that rides
out an outage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from ffdi_tune.errors import TrackingError, did_you_mean
from ffdi_tune.tracking.records import TrialRecord
from ffdi_tune.tracking.schema import (
    DATA_ROOT,
    EXPERIMENT_KIND,
    PARENT,
    ROLE,
    SEARCH,
    TRAINING_VIEW,
    TRIAL_ID,
)
from ffdi_tune.tracking.settings import TrackingConfig
from ffdi_tune.tracking.spool import Spool, SpooledWrites

__all__ = [
    "DEFAULT_TRACKING_URI",
    "resolve_tracking",
    "StoreReader",
    "StoreWriter",
    "Tracker",
    "replay_spool",
    "unreachable",
]

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


def _quiet_mlflow_env() -> None:
    """MLflow's own settings for a search, unless the user set them."""
    # no progress bar per uploaded checkpoint
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow retries a failed request 7 times with exponential backoff (minutes in all); during a
    # search the writes are spooled instead, so a few quick retries are enough to ride out a hiccup.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


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


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means the store cannot be reached now, not that it refused a request."""
    seen: BaseException | None = exc
    while seen is not None:
        if (
            isinstance(seen, (ConnectionError, TimeoutError))
            or type(seen).__name__ in _NETWORK_ERRORS
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return bool(_UNREACHABLE.search(str(exc)))


_NETWORK_ERRORS = {
    "ConnectionError",
    "MaxRetryError",
    "NewConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "RemoteDisconnected",
    "ProtocolError",
    "ChunkedEncodingError",
}
_UNREACHABLE = re.compile(
    r"Max retries exceeded|Connection (refused|reset|aborted)|timed out|"
    r"error code 5\d\d|database is locked"
)


class StoreReader:
    """The connection to the store, and what is read back from it: runs, metrics and artifacts.

    The ``MlflowClient`` is made on first use and left out of a pickle (Tune pickles the callbacks
    that hold a tracker), so an unpickled reader connects again when it is next used.
    """

    def __init__(self, uri: str, artifact_location: str | None = None):
        self.uri, self.artifact_location = uri, artifact_location
        self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            _quiet_mlflow_env()
            from mlflow.tracking import MlflowClient

            # schema set-up chatter
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        """The id of experiment ``name`` (restored if deleted); made when missing and ``create``,
        else None. A store that cannot be used is a one-line :class:`TrackingError`."""
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                # one made without the tag (by hand, say) would open in MLflow's GenAI view
                if create and exp.tags.get(EXPERIMENT_KIND) != TRAINING_VIEW:
                    self.client.set_experiment_tag(
                        exp.experiment_id, EXPERIMENT_KIND, TRAINING_VIEW
                    )
                return exp.experiment_id
            if not create:
                return None
            return self.client.create_experiment(
                name,
                artifact_location=self.artifact_location,
                tags={EXPERIMENT_KIND: TRAINING_VIEW},
            )
        except Exception as exc:
            if isinstance(exc, TrackingError):
                raise
            raise TrackingError(
                f"MLflow tracking store {self.uri} cannot be used ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); check tracking.uri or $MLFLOW_TRACKING_URI"
            ) from None

    def _find(self, experiment_id: str, query: str):
        """The latest run of the experiment that matches ``query``, or None."""
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=query,
            max_results=50,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    def _latest_search(self, experiment_name: str):
        exp_id = self.experiment_id(experiment_name, create=False)
        return self._find(exp_id, f"tags.`{ROLE}` = 'search'") if exp_id else None

    def _child(self, experiment_id: str, parent_id: str, trial_id: str):
        """The child run of ``trial_id`` under ``parent_id``, found by its tags (or None)."""
        query = f"tags.`{PARENT}` = '{parent_id}' and tags.`{TRIAL_ID}` = '{trial_id}'"
        return self._find(experiment_id, query)

    def child_run_id(self, experiment_id: str, parent_id: str, trial_id: str) -> str | None:
        """The id of the child run of ``trial_id`` under ``parent_id`` (None when there is none)."""
        run = self._child(experiment_id, parent_id, trial_id)
        return run.info.run_id if run is not None else None

    def search_run_id(self, experiment_name: str) -> str | None:
        """The id of the latest search run of ``experiment_name`` (None when there is none)."""
        run = self._latest_search(experiment_name)
        return run.info.run_id if run is not None else None

    def search_tags(self, experiment_name: str) -> dict[str, str]:
        """The tags of the latest search run of ``experiment_name`` (empty when there is none)."""
        run = self._latest_search(experiment_name)
        return dict(run.data.tags) if run else {}

    def search_report_names(self, experiment_name: str) -> list[str] | None:
        """The report part's image names the latest search of ``experiment_name`` recorded
        (``holdout/report_names.json``), or None when it recorded none."""
        run = self._latest_search(experiment_name)
        if run is None:
            return None
        with tempfile.TemporaryDirectory(prefix="ffdi-holdout-") as tmp:
            try:
                path = self.client.download_artifacts(
                    run.info.run_id, "holdout/report_names.json", tmp
                )
            except Exception:  # an older search, or one without a report part
                return None
            return list(json.loads(Path(path).read_text()))

    def search_config_text(self, experiment_name: str) -> str | None:
        """The resolved YAML (``search_space.yaml``) of the latest search of ``experiment_name``."""
        run = self._latest_search(experiment_name)
        if run is None:
            return None
        with tempfile.TemporaryDirectory(prefix="ffdi-config-") as tmp:
            try:
                return Path(
                    self.client.download_artifacts(run.info.run_id, "search_space.yaml", tmp)
                ).read_text()
            except Exception:  # a run made elsewhere, without the artifact
                return None

    def finished_trials(self, experiment_names: list[str]) -> list[TrialRecord]:
        """FINISHED trial runs of the named searches; an unknown name is a one-line error."""
        records = []
        for name in experiment_names:
            exp_id = self.experiment_id(name, create=False)
            if exp_id is None:
                known = [e.name for e in self.client.search_experiments()]
                raise TrackingError(
                    f"experiment {name!r} not found in {self.uri}{did_you_mean(name, known)}; run "
                    "the search first, or pass the name of a finished one with --experiment"
                )
            records += [
                TrialRecord.of(r)
                for r in self.client.search_runs(
                    [exp_id],
                    filter_string=f"tags.`{ROLE}` = 'trial' and attributes.status = 'FINISHED'",
                    max_results=10000,
                )
            ]
        return records

    def children(self, experiment_id: str, parent_id: str) -> list:
        """Every run whose parent is ``parent_id`` (MLflow's own run objects)."""
        return self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_id}'", max_results=10000
        )

    def trials_of(self, experiment_id: str, parent_id: str) -> list[TrialRecord]:
        """Every trial run of the search run ``parent_id``."""
        return [
            TrialRecord.of(r)
            for r in self.children(experiment_id, parent_id)
            if r.data.tags.get(ROLE) == "trial"
        ]

    def metric_values(self, run_id: str, key: str) -> list[float]:
        """Every value logged for ``key`` on a run (one per epoch for a trial), oldest first."""
        return [m.value for m in self.client.get_metric_history(run_id, key)]

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Fetch one artifact of a run into ``dst``; a missing one is a one-line error."""
        try:
            return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))
        except Exception as exc:
            raise TrackingError(
                f"run {run_id} has no readable artifact {artifact_path} ({type(exc).__name__}); "
                "leave that trial out or rerun it"
            ) from None


class StoreWriter(StoreReader):
    """The writes, made in the store at once: runs created (or found again) and journaled
    operations applied (:meth:`apply`), a trial run's placeholder id resolved on the way."""

    OPERATIONS = (
        "trial_run",
        "metrics",
        "tags",
        "artifact",
        "inputs",
        "finish",
        "close_unfinished",
    )

    def __init__(self, uri: str, artifact_location: str | None = None):
        super().__init__(uri, artifact_location)
        self._ids: dict[str, str] = {}  # placeholder -> run id, once known

    def _open_search_run(
        self, experiment_id: str, name: str, resume: bool, config_yaml: str, data_root: str
    ) -> str:
        """The latest search run ``name`` (RUNNING again) on a resume, else a new one with the
        resolved YAML as its artifact."""
        if resume:
            run = self._find(
                experiment_id, f"tags.`{ROLE}` = 'search' and tags.`{SEARCH}` = '{name}'"
            )
            if run is not None:
                self.client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
        run_id = self.client.create_run(
            experiment_id,
            run_name=name,
            tags={ROLE: "search", SEARCH: name, DATA_ROOT: data_root},
        ).info.run_id
        self.client.log_text(run_id, config_yaml, "search_space.yaml")
        return run_id

    def _find_or_create_trial_run(
        self,
        experiment_id: str,
        parent_id: str,
        trial_id: str,
        params: dict[str, Any] | None,
        run_name: str | None = None,
        start_time: int | None = None,
        role: str = "trial",
    ) -> str:
        """The child run of ``trial_id`` under ``parent_id``: found by its tags (RUNNING again), or
        created with ``params`` and the ``role`` tag (``trial``, or ``refit``)."""
        from mlflow.entities import Param

        run = self._child(experiment_id, parent_id, trial_id)
        if run is not None:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            if params and not run.data.params:  # created just before an outage cut its params off
                self.client.log_batch(
                    run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())]
                )
            return run.info.run_id
        run = self.client.create_run(
            experiment_id,
            run_name=run_name or trial_id,
            start_time=start_time,
            tags={ROLE: role, PARENT: parent_id, TRIAL_ID: trial_id},
        )
        self.client.log_batch(
            run.info.run_id, params=[Param(k, str(v)) for k, v in sorted((params or {}).items())]
        )
        return run.info.run_id

    def _create_ensemble_run(
        self,
        experiment_id: str,
        name: str,
        parent_id: str | None,
        params: dict[str, Any],
        metrics: dict[str, float],
        artifacts: list[Path],
        tags: dict[str, str] | None = None,
    ) -> str:
        """A new run tagged ``ffdi.role=ensemble`` with params, metrics and files (left open)."""
        from mlflow.entities import Metric, Param

        tags = {**(tags or {}), ROLE: "ensemble"}
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
        return run.info.run_id

    def _resolve(self, run_id: str) -> str:
        """The real id of ``run_id``; a placeholder ``pending:<experiment>:<parent>:<trial>`` is
        found by its tags, or created now (without params) if the write that made it was lost."""
        if not run_id.startswith("pending:"):
            return run_id
        if run_id not in self._ids:
            _, experiment_id, parent_id, trial_id = run_id.split(":", 3)
            self._ids[run_id] = self._find_or_create_trial_run(
                experiment_id, parent_id, trial_id, None
            )
        return self._ids[run_id]

    def apply(self, entry: dict[str, Any]) -> str | None:
        """Make one journaled write (an entry of the spool) in the store; a ``trial_run`` returns
        the run's id."""
        from mlflow.entities import Metric, RunTag

        op, run = entry["op"], entry["run"]
        if op == "trial_run":
            _, experiment_id, parent_id, trial_id = run.split(":", 3)
            self._ids[run] = self._find_or_create_trial_run(
                experiment_id,
                parent_id,
                trial_id,
                entry.get("params"),
                entry.get("run_name"),
                entry.get("time"),
                entry.get("role", "trial"),
            )
            return self._ids[run]
        run_id = self._resolve(run)
        if op == "metrics":
            self.client.log_batch(
                run_id,
                metrics=[
                    Metric(k, v, entry["time"], entry["step"]) for k, v in entry["metrics"].items()
                ],
            )
        elif op == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
        elif op == "artifact":
            self.client.log_artifact(run_id, entry["path"], entry.get("artifact_path"))
        elif op == "inputs":
            self.client.log_inputs(run_id, datasets=[_dataset(d) for d in entry["datasets"]])
        elif op == "finish":
            self.client.set_terminated(run_id, status=entry["status"], end_time=entry.get("time"))
        elif op == "close_unfinished":
            for child in self.children(entry["experiment_id"], run_id):
                if child.info.status == "RUNNING":
                    self.client.set_terminated(child.info.run_id, status=entry["status"])
        else:
            raise ValueError(
                f"unknown tracking operation {op!r}; valid: {', '.join(self.OPERATIONS)}"
            )
        return None


_IMAGE_LIST_SCHEMA = json.dumps(
    {"mlflow_colspec": [{"name": "img_name", "type": "string"}, {"name": "target", "type": "long"}]}
)


def _dataset(record: dict):
    """MLflow's dataset input of a :func:`~ffdi_tune.tracking.records.dataset_input` record."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        record["name"],
        record["digest"],
        "local",
        json.dumps({"uri": record["source"]}),
        schema=_IMAGE_LIST_SCHEMA,
        profile=json.dumps({"num_rows": record["rows"]}),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", record["context"])])


class Tracker(StoreWriter):
    """The project's run layout on an MLflow store, every write through a spool; picklable.

    With a ``spool_dir``, writes that cannot reach the store (server down or restarting) are kept in
    a local :class:`~ffdi_tune.tracking.spool.Spool` instead of failing, and replayed in their
    original order as soon as the store answers again
    (:class:`~ffdi_tune.tracking.spool.SpooledWrites`: tried at most every ``writes.probe_s``
    seconds), at the end of the search, or by ``ffdi-tune sync``. A child run created during an
    outage gets a placeholder id ``pending:<experiment>:<parent>:<trial>`` that later writes
    resolve by tags. A search run and an ensemble run are created in the store at once."""

    def __init__(
        self, uri: str, artifact_location: str | None = None, spool_dir: str | Path | None = None
    ):
        super().__init__(uri, artifact_location)
        self.spool = Spool(spool_dir) if spool_dir else None
        self._writes: SpooledWrites | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_writes": None}

    @property
    def writes(self) -> SpooledWrites:
        """The spooled-write machinery (made on first use; its ``probe_s`` paces the retries)."""
        if self._writes is None:
            self._writes = SpooledWrites(
                self.apply,
                unreachable,
                self.spool,
                {"uri": self.uri, "artifact_location": self.artifact_location},
                f"MLflow at {self.uri}",
            )
        return self._writes

    def _write(self, op: str, run: str, **args) -> str | None:
        """Apply one write now, or keep it in the spool while the store is unreachable."""
        result = self.writes.write({"op": op, "run": run, **args})
        return (result or run) if op == "trial_run" else result

    # -- runs --------------------------------------------------------------------------------
    def search_run(
        self,
        experiment_id: str,
        name: str,
        resume: bool,
        config_yaml: str,
        data_root: str,
        tags: dict[str, str] | None = None,
    ) -> str:
        """The parent run of search ``name``: the latest one when resuming, else a new one.

        ``tags`` (package versions, data fingerprints) are set on it either way, so a resumed
        search records what it continued with.
        """
        run_id = self._open_search_run(experiment_id, name, resume, config_yaml, data_root)
        # a resume may read another root
        self.set_tags(run_id, {DATA_ROOT: data_root, **(tags or {})})
        return run_id

    def trial_run(
        self,
        experiment_id: str,
        parent_id: str,
        trial_id: str,
        params: dict[str, Any],
        run_name: str | None = None,
        role: str = "trial",
    ) -> str:
        """The child run of ``trial_id`` (created once; found again after a resume or retry),
        tagged ``ffdi.role=<role>``."""
        return self._write(
            "trial_run",
            f"pending:{experiment_id}:{parent_id}:{trial_id}",
            params=params,
            run_name=run_name,
            time=int(time.time() * 1000),
            role=role,
        )

    def ensemble_run(
        self,
        experiment_id: str,
        name: str,
        parent_id: str | None,
        params: dict[str, Any],
        metrics: dict[str, float],
        artifacts: list[Path],
        tags: dict[str, str] | None = None,
        model: dict | None = None,
    ) -> str:
        """One finished run (tag ffdi.role=ensemble) with an ensemble's recipe, scores and files,
        and with ``model`` (:func:`~ffdi_tune.tracking.model.log_ensemble_model`'s arguments) the
        ensemble as its pyfunc model ``model``."""
        run_id = self._create_ensemble_run(
            experiment_id, name, parent_id, params, metrics, artifacts, tags
        )
        if model is not None:
            from ffdi_tune.tracking.model import log_ensemble_model

            try:
                log_ensemble_model(run_id, self.uri, **model)
            except Exception as exc:  # the submission and the run matter more than the model
                logging.getLogger(__name__).warning(
                    "the ensemble's MLflow model was not logged (%s: %s); the submission is",
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                )
        self.finish(run_id)
        return run_id

    # -- logging ------------------------------------------------------------------------------
    def log_metrics(
        self, run_id: str, metrics: dict[str, float], step: int, time_ms: int | None = None
    ) -> None:
        """Log ``metrics`` at ``step``, stamped ``time_ms`` (when they were measured; now)."""
        self._write(
            "metrics",
            run_id,
            metrics={k: float(v) for k, v in metrics.items()},
            step=int(step),
            time=int(time.time() * 1000) if time_ms is None else int(time_ms),
        )

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._write("artifact", run_id, path=str(path), artifact_path=artifact_path)

    def log_inputs(self, run_id: str, datasets: list[dict]) -> None:
        """Log :func:`~ffdi_tune.tracking.records.dataset_input` records as the run's inputs."""
        if datasets:
            self._write("inputs", run_id, datasets=datasets)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        if tags:
            self._write("tags", run_id, tags={k: str(v) for k, v in tags.items()})

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._write("finish", run_id, status=status, time=int(time.time() * 1000))

    def close_unfinished(self, experiment_id: str, parent_id: str, status: str = "KILLED") -> None:
        """Mark every child of ``parent_id`` still RUNNING as ``status``."""
        self._write("close_unfinished", parent_id, experiment_id=experiment_id, status=status)

    # -- the spool ----------------------------------------------------------------------------
    def pending(self) -> int:
        """How many writes wait in the spool for the store to come back."""
        return self.writes.pending()

    def resolve(self, run_id: str) -> str:
        """The real id of ``run_id`` (a placeholder is looked up by its tags); '' if there is none
        yet, or the store is unreachable."""
        try:
            return self._resolve(run_id)
        except Exception:
            return ""

    def replay(self, wait: bool = True) -> bool:
        """Apply the spooled writes in order; True when none is left (:class:`SpooledWrites`)."""
        return self.writes.replay(wait)


def replay_spool(folder: str | Path) -> int:
    """Replay the tracking writes kept in ``folder`` into their store; return how many."""
    spool = Spool(folder)
    n = len(spool)
    if not n:
        return 0
    store = spool.store()
    tracker = Tracker(store["uri"], store.get("artifact_location"), folder)
    if not tracker.replay():
        raise TrackingError(
            f"MLflow at {tracker.uri} is still unreachable; {tracker.pending()} write(s) wait in "
            f"{folder}; run ffdi-tune sync again once it answers"
        )
    return n
