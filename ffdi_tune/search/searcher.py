"""What Tune asks before and after each trial: TPE told the truth, and the time budget kept.

Ray's ``OptunaSearch`` tells Optuna each trial's *last* reported value as COMPLETE, so a trial that
ASHA stopped after one epoch looks to TPE like a finished one with a one-epoch score, and a trial
whose best epoch was not its last is under-rated (the ensemble uses ``best.pt``, the best epoch).
:class:`TrialSearcher` reports every epoch as an intermediate value (step = epoch), tells a trial
that ran all its epochs as COMPLETE with its *best* epoch's value, and one stopped early (by ASHA or
the budget) as PRUNED, which TPE ranks by its intermediate values as it does Optuna's own pruned
trials. It also proposes no new trial once the time budget cannot fit one; :class:`BudgetStopper`
stops a running trial when its next epoch would eat into the final stage's share.

Both are pickled into Tune's experiment state, and a resumed search gets them back from there; the
live budget of the running driver (:class:`LiveBudget`) is therefore never pickled: they, and the
driver's callbacks, look it up by search name (:func:`attach_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ffdi_tune.scoring.epoch_metrics import is_better
from ffdi_tune.search.budget import FinalStageEstimate, TimeBudget
from ffdi_tune.search.space import DEFAULT_RECIPE_KEY

__all__ = [
    "TrialSearcher",
    "BudgetStopper",
    "LiveBudget",
    "attach_budget",
    "detach_budget",
    "live_budget",
]


@dataclass
class LiveBudget:
    """The running driver's budget and what it learns about trial and final-stage durations."""

    budget: TimeBudget
    final_stage: FinalStageEstimate
    # trial id -> budget.used() at its start
    started: dict[str, float] = field(default_factory=dict)
    # trials with a scored epoch: the final stage's candidates
    scored: set[str] = field(default_factory=set)
    # with a plan: the shortest useful trial (to ASHA's first rung, at ``first_rung`` epochs);
    # without, the ended trials' mean length decides
    shortest_trial_s: float | None = None
    first_rung: int = 1
    # seconds from each trial's start to its first scored epoch, as measured
    to_first_epoch_s: list[float] = field(default_factory=list)
    # seconds each scored epoch took (its epoch_time_s), as measured
    epoch_s: list[float] = field(default_factory=list)
    first_let_in: bool = False  # the first trial was let past the gate

    def reserve(self) -> float:
        return self.final_stage.seconds(max(len(self.scored), 1))

    def room_for_a_trial(self) -> bool:
        """Whether the rest of the budget, less the final stage's share, fits one more trial.

        A planned search's trials are mostly short (ASHA stops most at a low rung), and its first
        trial, the default recipe, trains to full length: the mean of the ended trials would then
        close the search after the default alone, so the first-rung cost decides there: the
        plan's, or (once trials have scored an epoch) the measured time to a first epoch plus the
        rung's other epochs at the measured epoch time, whichever is longer. The search's first
        trial always starts while any time is left beyond the final stage's share (a trial the
        budget cuts short still ships); a resumed run, whose budget has seen trials end, is gated
        like the others.
        """
        left = self.budget.remaining() - self.reserve()
        if not self.started and not self.budget.trial_s and not self.first_let_in:
            # the search's first trial always starts: cut short, it still ships (once: the other
            # slots Tune fills before that trial has started are gated as usual)
            self.first_let_in = left > 0
            return self.first_let_in
        needed = self.shortest_trial_s
        if needed is None:
            needed = self.budget.expected_trial_s()
        elif self.to_first_epoch_s:  # the plan's probe may run short of the real pace
            first = sum(self.to_first_epoch_s) / len(self.to_first_epoch_s)
            epoch = sum(self.epoch_s) / len(self.epoch_s) if self.epoch_s else first
            needed = max(needed, first + (self.first_rung - 1) * epoch)
        return left > needed


_LIVE: dict[str, LiveBudget] = {}


def attach_budget(search: str, live: LiveBudget) -> None:
    _LIVE[search] = live


def detach_budget(search: str) -> None:
    _LIVE.pop(search, None)


def live_budget(search: str) -> LiveBudget | None:
    return _LIVE.get(search)


class TrialSearcher(OptunaSearch):
    """``OptunaSearch`` that reports best-epoch values and pruned trials, within a time budget."""

    def __init__(self, *args, search_name: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.search_name = search_name
        self._best: dict[str, float] = {}
        self._epochs: dict[str, tuple[int, int]] = {}  # trial id -> (epochs run, epochs planned)
        # epochs told to Optuna (a retried trial repeats some)
        self._reported: dict[str, set[int]] = {}

    @property
    def study(self):
        """The Optuna study behind the searcher (every trial and its state)."""
        return self._ot_study

    def enqueue_default(self, point: dict) -> None:
        """Propose ``point`` (the default recipe) before anything TPE samples; its trial is marked
        so that its run is tagged and the final stage always counts it."""
        self._ot_study.enqueue_trial(point, user_attrs={DEFAULT_RECIPE_KEY: True})

    def suggest(self, trial_id: str):
        live = live_budget(self.search_name)
        if live is not None and not live.room_for_a_trial():
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        value, epoch = (
            float(result[self.metric]),
            int(result.get("epoch", result.get("training_iteration", 1))),
        )
        if is_better(self.metric, value, self._best.get(trial_id)):
            self._best[trial_id] = value
        self._epochs[trial_id] = (epoch, int(result.get("epochs_planned", epoch)))
        if epoch not in self._reported.setdefault(trial_id, set()):
            self._ot_trials[trial_id].report(value, epoch)
            self._reported[trial_id].add(epoch)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if not error and result:
            # The result on which a scheduler stops a trial comes here, not through on_trial_result.
            self.on_trial_result(trial_id, result)
        if error or trial_id in self._completed_trials or trial_id not in self._best:
            # failed, or no epoch scored: FAIL/PRUNED
            return super().on_trial_complete(trial_id, result, error)
        run, planned = self._epochs[trial_id]
        ot_trial = self._ot_trials[trial_id]
        if run < planned:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, self._best[trial_id], state=TrialState.COMPLETE)
        self._completed_trials.add(trial_id)


class BudgetStopper(tune.Stopper):
    """Stops a trial whose next epoch would not end before the final stage's share of the budget."""

    def __init__(self, search_name: str):
        self.search_name = search_name

    def __call__(self, trial_id: str, result: dict) -> bool:
        live = live_budget(self.search_name)
        if live is None:
            return False
        live.final_stage.observe(result)
        if int(result.get("epoch", 0)) >= int(result.get("epochs_planned", 0)):
            return False  # its last epoch: it ends by itself
        if live.budget.remaining() - live.reserve() < float(result.get("epoch_time_s", 0.0)):
            live.budget.cut.add(trial_id)
            return True
        return False

    def stop_all(self) -> bool:
        return False
