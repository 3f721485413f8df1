"""A search's wall-clock budget: what is left of it, and what the final stage will need of it.

``search.time_budget: 8h`` (or ``--time-budget``) is time the driver is alive: what it has used is
kept in ``budget.json`` in the search's output folder (``runs/<name>/``) as it goes, so a resumed
search continues from there and the time the driver was dead does not count. The search stops
proposing trials once the rest cannot fit one, stops a running trial when its next epoch would run
into the time kept for the final stage (:class:`FinalStageEstimate`, measured from the trials' own
scoring speed), and ends any trial still running at the budget's end.

Durations are written as in :mod:`ffdi_tune.durations` (``8h``, ``90m``, ``1h30m``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ffdi_tune.files import write_atomic

__all__ = ["TimeBudget", "FinalStageEstimate", "BUDGET_FILE"]

BUDGET_FILE = "budget.json"  # in a search's output folder


@dataclass
class TimeBudget:
    """Seconds a search may run, counted while its driver is alive, persisted in ``folder``.

    ``clock`` is a monotonic clock (tests pass their own); ``started`` is when this run of the
    driver began on it (default: now), so its set-up (data check, cache build, Ray) counts too.
    :meth:`save` records the time used so far; a later :meth:`resume` starts from it, so time
    between two runs of the driver is not counted.
    """

    total_s: float
    used_before_s: float = 0.0
    folder: Path | None = None
    cut: set[str] = field(default_factory=set)  # trials the budget ended before their last epoch
    # how long each trial took (a cut one: extrapolated)
    trial_s: list[float] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    started: float | None = None

    def __post_init__(self):
        if self.started is None:
            self.started = self.clock()

    @classmethod
    def resume(
        cls,
        folder: Path,
        extra_s: float | None = None,
        total_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> TimeBudget | None:
        """The budget a search kept in ``folder``: the rest of it, or ``extra_s`` more than it used.

        ``total_s`` (the YAML's budget) applies when nothing was kept; None when there is no budget.
        """
        path = Path(folder) / BUDGET_FILE
        if path.is_file():
            kept = json.loads(path.read_text())
            used, total = float(kept["used_s"]), float(kept["total_s"])
            cut, trial_s = set(kept["cut"]), list(kept["trial_s"])
        else:  # the search had no budget, or resumes on a machine without its budget.json
            used, total, cut, trial_s = 0.0, total_s, set(), []
        if extra_s is not None:
            total = used + extra_s
        if total is None:
            return None
        return cls(total, used, Path(folder), cut, trial_s, clock, started)

    def used(self) -> float:
        return self.used_before_s + (self.clock() - self.started)

    def remaining(self) -> float:
        return self.total_s - self.used()

    def end_time(self) -> float:
        """The budget's end as a ``time.time()`` value (trials on any node compare against it)."""
        return time.time() + self.remaining()

    def save(self) -> None:
        if self.folder is not None:
            write_atomic(
                self.folder / BUDGET_FILE,
                json.dumps(
                    {
                        "total_s": self.total_s,
                        "used_s": round(self.used(), 3),
                        "cut": sorted(self.cut),
                        "trial_s": [round(t, 3) for t in self.trial_s],
                    }
                ),
            )

    def expected_trial_s(self) -> float:
        """How long a trial takes, from the ones that ended (0 before any did)."""
        return sum(self.trial_s) / len(self.trial_s) if self.trial_s else 0.0


class FinalStageEstimate:
    """How long the final stage will take, from how fast the trials scored their validation images.

    Each trial reports ``eval_time_s`` for ``images_per_eval`` images; the final stage scores every
    candidate on ``images`` (all of valset and testset) ``passes`` times (its TTA views, and the
    perturbed copy when it ranks on it), and loads each checkpoint; it scores at most ``pool``
    candidates (the recipe's ``candidates.pool``; None: every one). Until a trial reports, the
    estimate is 0.
    """

    SAFETY = 1.5  # on top: decoding the report part, checkpoints, contention with running trials
    PER_MEMBER_S = 3.0  # download and load one checkpoint

    def __init__(self, images: int, passes: int, images_per_eval: int, pool: int | None = None):
        self.images, self.passes, self.images_per_eval = images, passes, max(images_per_eval, 1)
        self.pool = pool
        self.per_image_s = 0.0

    def observe(self, result: dict) -> None:
        if result.get("eval_time_s") and self.passes:
            self.per_image_s = max(
                self.per_image_s, float(result["eval_time_s"]) / self.images_per_eval
            )

    def seconds(self, members: int) -> float:
        if not self.passes:
            return 0.0
        members = min(members, self.pool or members)
        return (
            self.SAFETY
            * members
            * (self.images * self.passes * self.per_image_s + self.PER_MEMBER_S)
        )
