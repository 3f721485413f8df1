"""The driver's eye on Tune: every trial mirrored into an MLflow child run, and the budget's clock.

Trials never talk to MLflow: :class:`MlflowTrials` runs on the driver, so workers need no tracking
access and a trial stopped by ASHA (which never returns from its last ``tune.report``) still gets a
correct final status. Tune pickles the callback into its experiment state, so a resumed search
re-attaches to the same runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ray import tune
from ray.tune.result import SHOULD_CHECKPOINT

from ffdi_tune import tracking
from ffdi_tune.scoring.epoch_metrics import epoch_metric_names
from ffdi_tune.search.searcher import live_budget
from ffdi_tune.search.space import CONDITIONAL_SEP, trial_settings
from ffdi_tune.tracking import Tracker
from ffdi_tune.training.trial import BEST_FILE

__all__ = ["MlflowTrials", "RESULT_TAGS", "progress"]

# result key (what the trainable adds to every report) -> tag on the trial's MLflow run, set when
# the value first appears or changes
RESULT_TAGS = {
    "node_id": tracking.NODE_ID,
    "augment_on": tracking.AUGMENT_ON,
    "weights_source": tracking.WEIGHTS_SOURCE,
    "weights_sha256": tracking.WEIGHTS_SHA256,
}
SAVE_BUDGET_EVERY_S = 10.0


def progress(trial, fixed: dict) -> tuple[int, int]:
    """(epochs run, epochs planned) of a Tune trial; fewer run than planned means it was stopped."""
    return int((trial.last_result or {}).get("epoch", 0)), trial_settings(
        fixed, trial.config
    ).epochs


class MlflowTrials(tune.Callback):
    """Mirror trials into MLflow child runs from the driver (picklable: Tune saves it for resume).

    With a time budget attached to the search (:func:`~ffdi_tune.search.searcher.attach_budget`) it
    also keeps the budget's clock: time used is saved as results come in, each trial's duration and
    result feed the estimates, and a trial the budget ended is tagged ``ffdi.budget_cut``.
    """

    def __init__(
        self,
        tracker: Tracker,
        experiment_id: str,
        parent_id: str,
        fixed: dict,
        val_images: int,
        search_name: str = "",
    ):
        self.tracker, self.experiment_id, self.parent_id, self.fixed = (
            tracker,
            experiment_id,
            parent_id,
            fixed,
        )
        # how many valset images each epoch's metrics use (the selection part)
        self.val_images = val_images
        self.search_name = search_name
        self.run_ids: dict[str, str] = {}
        self.result_tags: dict[tuple[str, str], str] = {}

    def _run(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            params = trial_settings(self.fixed, trial.config).model_dump()
            params.update({k: v for k, v in trial.config.items() if CONDITIONAL_SEP in k})
            if getattr(self, "val_images", None):  # absent in a callback pickled before it existed
                params["val_images"] = self.val_images
            self.run_ids[trial.trial_id] = self.tracker.trial_run(
                self.experiment_id,
                self.parent_id,
                trial.trial_id,
                params,
                run_name=f"trial-{trial.trial_id}",
            )
        return self.run_ids[trial.trial_id]

    def _live(self):
        return live_budget(getattr(self, "search_name", ""))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)
        # a start after a failure or a resume reruns whatever was held
        self._pending().pop(trial.trial_id, None)
        live = self._live()
        if live is not None:
            live.started.setdefault(trial.trial_id, live.budget.used())

    def _pending(self) -> dict[str, tuple[int, dict]]:
        # absent in a callback pickled before it existed
        return self.__dict__.setdefault("pending", {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: result[k] for k in epoch_metric_names() if k in result}
        step = int(result.get("epoch", 0))
        if result.get(SHOULD_CHECKPOINT):
            # Logged once Tune has registered the epoch's checkpoint (on_checkpoint): a trial lost
            # before that restarts from the epoch before and reports this epoch again.
            self._pending()[trial.trial_id] = (step, metrics)
        else:
            self.tracker.log_metrics(self._run(trial), metrics, step=step)
        # Tag only on a change (a retry after a node loss may move the trial), not per epoch.
        # absent in a callback pickled before it existed
        tagged = self.__dict__.setdefault("result_tags", {})
        new = {
            tag: str(result[key])
            for key, tag in RESULT_TAGS.items()
            if result.get(key) and tagged.get((trial.trial_id, tag)) != str(result[key])
        }
        if new:
            tagged.update({(trial.trial_id, tag): value for tag, value in new.items()})
            self.tracker.set_tags(self._run(trial), new)
        live = self._live()
        if live is not None:
            live.scored.add(trial.trial_id)
            if time.monotonic() - getattr(self, "_saved_at", 0.0) > SAVE_BUDGET_EVERY_S:
                live.budget.save()
                self._saved_at = time.monotonic()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        pending = self._pending().pop(trial.trial_id, None)
        if pending is not None:
            step, metrics = pending
            self.tracker.log_metrics(self._run(trial), metrics, step=step)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._pending().pop(trial.trial_id, None)  # its checkpoint never came: the epoch reruns

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        self.on_checkpoint(iteration, trials, trial, trial.checkpoint)  # anything still held
        epochs_run, planned = progress(trial, self.fixed)
        live = self._live()
        cut = False
        if live is not None:
            cut = trial.trial_id in live.budget.cut or (
                epochs_run < planned and live.budget.remaining() <= 1.0
            )
            if cut:
                live.budget.cut.add(trial.trial_id)
            # a cut trial: as long as all its epochs would have taken
            if trial.trial_id in live.started:
                took = live.budget.used() - live.started[trial.trial_id]
                live.budget.trial_s.append(took * planned / max(epochs_run, 1) if cut else took)
            live.budget.save()
        self.tracker.set_tags(
            run_id,
            {
                tracking.STOPPED_EARLY: str(epochs_run < planned and not cut).lower(),
                tracking.EPOCHS_RUN: str(epochs_run),
                tracking.BUDGET_CUT: str(cut).lower(),
            },
        )
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                best = Path(folder) / BEST_FILE
                if best.is_file():
                    self.tracker.log_artifact(run_id, best, "checkpoint")
        self.tracker.finish(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._pending().pop(trial.trial_id, None)
        run_id = self._run(trial)
        message = "trial failed"
        if trial.error_file and os.path.exists(trial.error_file):
            lines = [
                ln
                for ln in Path(trial.error_file).read_text(errors="replace").splitlines()
                if ln.strip()
            ]
            message = lines[-1] if lines else message
        self.tracker.set_tags(run_id, {tracking.ERROR: message[:5000]})
        self.tracker.finish(run_id, "FAILED")
