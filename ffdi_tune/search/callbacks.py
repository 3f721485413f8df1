"""The driver's callbacks on Tune: every trial mirrored into an MLflow child run, and the time
budget's clock kept.

Trials never talk to MLflow: :class:`MlflowTrials` runs on the driver, so workers need no tracking
access and a trial stopped by ASHA (which never returns from its last ``tune.report``) still gets a
correct final status. :class:`BudgetClock` feeds the search's live time budget
(:func:`~ffdi_tune.search.searcher.attach_budget`) with the trials' starts, results and ends, and
decides which trials the budget cut. A round lists the clock first: Tune calls its callbacks in
that order, so a trial's cut is decided before its run is tagged. Tune pickles both into its
experiment state, so a resumed search re-attaches to the same runs and the same budget.
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

__all__ = ["MlflowTrials", "BudgetClock", "RESULT_TAGS", "progress"]

# result key (what the trainable adds to every report) -> tag on the trial's MLflow run, set when
# the value first appears or changes
RESULT_TAGS = {
    "node_id": tracking.NODE_ID,
    "augment_on": tracking.AUGMENT_ON,
    "weights_source": tracking.WEIGHTS_SOURCE,
    "weights_sha256": tracking.WEIGHTS_SHA256,
    "default_recipe": tracking.DEFAULT_RECIPE,
    "continued_from": tracking.CONTINUED_FROM,
    "weights_kept": tracking.WEIGHTS_KEPT,
}
SAVE_BUDGET_EVERY_S = 10.0


def progress(trial, fixed: dict) -> tuple[int, int]:
    """(epochs run, epochs planned) of a Tune trial; fewer run than planned means it was stopped."""
    return int((trial.last_result or {}).get("epoch", 0)), trial_settings(
        fixed, trial.config
    ).epochs


def _error_message(trial) -> str:
    """The last line of a failed trial's error file ('trial failed' without one)."""
    if not (trial.error_file and os.path.exists(trial.error_file)):
        return "trial failed"
    text = Path(trial.error_file).read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "trial failed"


class MlflowTrials(tune.Callback):
    """Mirror trials into MLflow child runs from the driver (picklable: Tune saves it for resume).

    A trial's run gets its settings as params, each epoch's metrics once Tune has registered that
    epoch's checkpoint, the system metrics sampled where it runs, the :data:`RESULT_TAGS` whenever
    they change, and at its end how many
    epochs it ran, whether it was stopped early or cut by the time budget (as :class:`BudgetClock`
    decided), its ``checkpoint/best.pt`` and its status.
    """

    def __init__(
        self,
        tracker: Tracker,
        experiment_id: str,
        parent_id: str,
        fixed: dict,
        val_images: int,
        search_name: str = "",
        inputs: list[dict] | None = None,
    ):
        self.tracker, self.experiment_id, self.parent_id = tracker, experiment_id, parent_id
        self.inputs = inputs or []  # the datasets every trial reads, logged on its run
        self.fixed = fixed
        # how many valset images each epoch's metrics use (the selection part)
        self.val_images = val_images
        self.search_name = search_name
        self.run_ids: dict[str, str] = {}
        self.result_tags: dict[tuple[str, str], str] = {}
        # trial id -> (epoch, metrics) reported with a checkpoint Tune has not registered yet
        self.held: dict[str, tuple[int, dict]] = {}
        # trial id -> how many system-metric samples its run has (their steps)
        self.system_steps: dict[str, int] = {}

    def _run(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            params = trial_settings(self.fixed, trial.config).model_dump()
            params.update({k: v for k, v in trial.config.items() if CONDITIONAL_SEP in k})
            if self.val_images:
                params["val_images"] = self.val_images
            self.run_ids[trial.trial_id] = self.tracker.trial_run(
                self.experiment_id,
                self.parent_id,
                trial.trial_id,
                params,
                run_name=f"trial-{trial.trial_id}",
            )
            self.tracker.log_inputs(self.run_ids[trial.trial_id], self.inputs)
        return self.run_ids[trial.trial_id]

    def _budget_cut(self, trial) -> bool:
        live = live_budget(self.search_name)
        return live is not None and trial.trial_id in live.budget.cut

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)
        # a start after a failure or a resume reruns whatever was held
        self.held.pop(trial.trial_id, None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: result[k] for k in epoch_metric_names() if k in result}
        step = int(result.get("epoch", 0))
        if result.get(SHOULD_CHECKPOINT):
            # Logged once Tune has registered the epoch's checkpoint (on_checkpoint): a trial lost
            # before that restarts from the epoch before and reports this epoch again.
            self.held[trial.trial_id] = (step, metrics)
        else:
            self.tracker.log_metrics(self._run(trial), metrics, step=step)
        self._log_system(trial, result)
        # Tag only on a change (a retry after a node loss may move the trial), not per epoch.
        new = {
            tag: str(result[key])
            for key, tag in RESULT_TAGS.items()
            if result.get(key) and self.result_tags.get((trial.trial_id, tag)) != str(result[key])
        }
        if new:
            self.result_tags.update({(trial.trial_id, tag): value for tag, value in new.items()})
            self.tracker.set_tags(self._run(trial), new)

    def _log_system(self, trial, result: dict) -> None:
        """The machine's samples the report carries, each at its own time and step."""
        for time_ms, values in tracking.system_metric_rows(result):
            step = self.system_steps.get(trial.trial_id, 0)
            self.tracker.log_metrics(self._run(trial), values, step=step, time_ms=time_ms)
            self.system_steps[trial.trial_id] = step + 1

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        held = self.held.pop(trial.trial_id, None)
        if held is not None:
            step, metrics = held
            self.tracker.log_metrics(self._run(trial), metrics, step=step)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.held.pop(trial.trial_id, None)  # its checkpoint never came: the epoch reruns

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        self.on_checkpoint(iteration, trials, trial, trial.checkpoint)  # anything still held
        epochs_run, planned = progress(trial, self.fixed)
        cut = self._budget_cut(trial)
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
        self.held.pop(trial.trial_id, None)
        run_id = self._run(trial)
        self.tracker.set_tags(run_id, {tracking.ERROR: _error_message(trial)[:5000]})
        self.tracker.finish(run_id, "FAILED")


class BudgetClock(tune.Callback):
    """Keep the clock of the search's time budget, when it has one (the
    :class:`~ffdi_tune.search.searcher.LiveBudget` of ``search_name``, looked up, never pickled).

    Time used is saved as results come in; a trial with a scored epoch becomes a candidate of the
    final stage; each trial's duration feeds the estimate of the next one's; and a trial that ends
    before its last epoch with the budget spent is added to the budget's ``cut`` trials.
    """

    def __init__(self, search_name: str, fixed: dict):
        self.search_name, self.fixed = search_name, fixed
        self._saved_at = 0.0  # time.monotonic() of the last save

    def on_trial_start(self, iteration, trials, trial, **info):
        live = live_budget(self.search_name)
        if live is not None:
            live.started.setdefault(trial.trial_id, live.budget.used())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        live = live_budget(self.search_name)
        if live is None:
            return
        if trial.trial_id not in live.scored and trial.trial_id in live.started:
            live.to_first_epoch_s.append(live.budget.used() - live.started[trial.trial_id])
        if "epoch_time_s" in result:
            live.epoch_s.append(float(result["epoch_time_s"]))
        live.scored.add(trial.trial_id)
        if time.monotonic() - self._saved_at > SAVE_BUDGET_EVERY_S:
            live.budget.save()
            self._saved_at = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        live = live_budget(self.search_name)
        if live is None:
            return
        budget = live.budget
        epochs_run, planned = progress(trial, self.fixed)
        if epochs_run < planned and budget.remaining() <= 1.0:
            budget.cut.add(trial.trial_id)
        cut = trial.trial_id in budget.cut
        if trial.trial_id in live.started:
            took = budget.used() - live.started[trial.trial_id]
            # a cut trial: as long as all its epochs would have taken
            budget.trial_s.append(took * planned / max(epochs_run, 1) if cut else took)
        budget.save()
