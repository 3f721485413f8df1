"""MLflow tracking: the schema of names, the store, and the spool that rides out an outage.

A search writes one parent run, a child run per trial and an ensemble run; everything else in the
package writes and reads them through :class:`Tracker` and reads a trial as a :class:`TrialRecord`.
``schema`` holds every tag and metric name as a constant (no MLflow needed to import it);
``records`` the typed records read back (and a valset split's tags); ``settings`` the YAML's
``tracking:`` section; ``store`` talks to MLflow (:class:`Tracker`, built on a reader and a writer
of the store); ``spool`` journals writes made while the store is away and replays them; ``system``
samples a trial's machine with MLflow's monitors; ``lease`` keeps one run of a search at a time
across machines; ``model`` is the shipped ensemble as an MLflow
model.
"""

from ffdi_tune.tracking.lease import Lease, LeaseHeld
from ffdi_tune.tracking.records import (
    TrialRecord,
    dataset_input,
    holdout_from_tags,
    holdout_tags,
)
from ffdi_tune.tracking.schema import *  # noqa: F403 - every name of the schema, as tracking.NAME
from ffdi_tune.tracking.schema import __all__ as _schema_names
from ffdi_tune.tracking.settings import TrackingConfig
from ffdi_tune.tracking.spool import SPOOL_DIR, Spool, SpooledWrites, search_spool
from ffdi_tune.tracking.store import (
    DEFAULT_TRACKING_URI,
    Tracker,
    replay_spool,
    resolve_tracking,
    unreachable,
)
from ffdi_tune.tracking.system import SystemSampler, system_metric_rows

__all__ = [
    *_schema_names,
    "TrialRecord",
    "holdout_tags",
    "holdout_from_tags",
    "dataset_input",
    "TrackingConfig",
    "SPOOL_DIR",
    "Spool",
    "SpooledWrites",
    "search_spool",
    "DEFAULT_TRACKING_URI",
    "Tracker",
    "replay_spool",
    "resolve_tracking",
    "unreachable",
    "SystemSampler",
    "Lease",
    "LeaseHeld",
    "system_metric_rows",
]
