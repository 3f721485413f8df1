"""A search planned from its time budget: how many trials, how many at once, which ASHA rungs, and
what the final stage keeps back, so that the best configurations train to full length.

Multi-fidelity as Hyperband / ASHA intend it: many short trials, the survivors trained to the full
length of the recipe. With reduction factor ``rf`` and grace period ``g``, a trial is judged at the
rungs ``g, g*rf, g*rf**2...`` below ``max_epochs``; about ``1/rf**i`` of the trials reach rung
``i``. :func:`plan_search` sizes the search so that one full-length trial (the default recipe, see
:mod:`~ffdi_tune.search.default_recipe`) and the survivors fit, given the seconds an epoch costs
(timed by :mod:`~ffdi_tune.search.probe`). Keys the user wrote (``search.num_samples``,
``search.max_concurrent``, ``scheduler.*``) are kept as written; the plan fills in the others.

>>> p = plan_search(PlanInputs(budget_s=300, used_s=20, epoch_s=30, eval_image_s=0.002,
...     final_images=600, final_passes=2, full_epochs=4, slots=2, accelerators=0))
>>> p.rungs, p.max_concurrent, p.num_samples
([1, 2, 4], 1, 2)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ffdi_tune.config import Domain, SearchConfig
from ffdi_tune.data.cache import default_cache_dir
from ffdi_tune.data.check import DataCheck
from ffdi_tune.data.layout import cache_dir_of
from ffdi_tune.data.passes import available_cpus
from ffdi_tune.durations import format_duration
from ffdi_tune.errors import SearchError
from ffdi_tune.files import write_atomic
from ffdi_tune.search.budget import FinalStageEstimate
from ffdi_tune.search.default_recipe import default_point
from ffdi_tune.search.probe import probe_cached
from ffdi_tune.search.space import trial_settings

__all__ = [
    "PlanInputs",
    "SearchPlan",
    "plan_search",
    "rung_epochs",
    "plan_inputs",
    "apply_plan",
    "plan_for_run",
    "PLAN_FILE",
    "MAX_PLANNED_TRIALS",
]

MAX_PLANNED_TRIALS = 200
# Share of the training time one full-length trial may take at the chosen concurrency: the rest is
# for the breadth that gives the survivors something to beat.
DEPTH_SHARE = 0.6
MARGIN = 0.05  # of the training time, for what the estimate misses (start-up of trial workers)
PLAN_FILE = "plan.json"  # in a search's output folder
RAY_START_S = 10.0  # starting Ray and opening the tracking runs, after the plan is made


@dataclass(frozen=True)
class PlanInputs:
    """What a plan is made from. ``epoch_s``: one epoch of one trial (train + selection-part eval)
    when it runs alone with every CPU or on one accelerator; ``eval_image_s``: seconds to score one
    image; ``final_images`` / ``final_passes``: what the final stage scores per member (valset and
    testset, TTA views); ``slots``: trials that can run at once (CPUs on a CPU-only machine, else
    accelerators); ``accelerators``: 0 on a CPU-only machine; ``full_epochs``: the recipe's length
    as the user wrote it, or None for the plan to choose (the longest rung ladder whose top trial
    fits :data:`DEPTH_SHARE` of the training time, as one recipe alone would use the budget);
    ``asha``: False for a FIFO search (every trial trains the full length). The ``explicit_*``
    values are the user's own and win over the plan."""

    budget_s: float
    used_s: float
    epoch_s: float
    eval_image_s: float
    final_images: int
    final_passes: int
    full_epochs: int | None
    slots: int
    accelerators: int
    top_k: int = 5
    pool: int | None = None
    grace_period: int = 1
    reduction_factor: float = 2.0
    explicit_num_samples: int | None = None
    explicit_max_concurrent: int | None = None
    # an epoch of the other trials (their backbones and sizes, on average); None: ``epoch_s``
    others_epoch_s: float | None = None
    # a trial's start: its worker, the model and its weights, the first batch
    trial_start_s: float = 3.0
    asha: bool = True


@dataclass(frozen=True)
class SearchPlan:
    num_samples: int
    max_concurrent: int
    # on CPUs, the share of the cores each of the concurrent trials gets; None with accelerators
    cpus_per_trial: int | None
    rungs: list[int]
    max_epochs: int
    final_reserve_s: float
    training_s: float
    trial_epoch_s: float  # one epoch of one trial at the planned concurrency
    expected_best_epochs: int
    eval_image_s: float = 0.0  # the probe's: seeds the final stage's estimate before any trial
    # the shortest useful trial: its start and its epochs to the first rung; a new trial starts
    # only while the budget still fits this
    first_rung_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for people: what the search will do with its budget."""
        return (
            f"plan: {self.num_samples} trials, {self.max_concurrent} at a time, ASHA rungs "
            f"{'/'.join(str(r) for r in self.rungs)} epochs (the best train "
            f"{self.expected_best_epochs}), ~{self.trial_epoch_s:.0f}s an epoch; "
            f"{format_duration(self.training_s)} of training, "
            f"{format_duration(self.final_reserve_s)} kept for the final stage"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def rung_epochs(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """The epochs at which ASHA judges a trial, ending with ``max_epochs`` (the full length).

    >>> rung_epochs(1, 2, 8), rung_epochs(1, 3, 10)
    ([1, 2, 4, 8], [1, 3, 9, 10])
    """
    rungs, epoch = [], float(grace_period)
    while round(epoch) < max_epochs:
        rungs.append(int(round(epoch)))
        epoch *= reduction_factor
    return [*dict.fromkeys(rungs), max_epochs]


def expected_epochs_per_trial(rungs: list[int], reduction_factor: float) -> float:
    """Epochs an average sampled trial trains when ASHA keeps ``1/rf`` of the trials at each rung.

    >>> expected_epochs_per_trial([1, 2, 4, 8], 2)
    2.5
    """
    total, previous = 0.0, 0
    for i, rung in enumerate(rungs):
        total += (rung - previous) / reduction_factor**i
        previous = rung
    return total


def _final_reserve(inputs: PlanInputs, trials: int) -> float:
    """The final stage's seconds when it scores ``trials`` candidates (at most its pool)."""
    estimate = FinalStageEstimate(
        inputs.final_images, inputs.final_passes, images_per_eval=1, pool=inputs.pool
    )
    estimate.per_image_s = inputs.eval_image_s
    return estimate.seconds(min(trials, inputs.pool or 3 * inputs.top_k))


def _full_epochs(inputs: PlanInputs, training_s: float) -> int:
    """The recipe's length as written, else the top of the longest rung ladder (``g * rf**k``)
    whose trial, alone, fits :data:`DEPTH_SHARE` of the training time (the grace period at least).

    >>> _full_epochs(PlanInputs(300, 0, 10, 0, 0, 0, None, 2, 0), 200.0)
    8
    """
    if inputs.full_epochs is not None:
        return inputs.full_epochs
    top, epochs = inputs.grace_period, float(inputs.grace_period)
    while round(epochs * inputs.reduction_factor) * inputs.epoch_s <= DEPTH_SHARE * training_s:
        epochs *= inputs.reduction_factor
        top = int(round(epochs))
    return top


def _concurrency(inputs: PlanInputs, full_epochs: int, training_s: float) -> int:
    """Trials at once: every accelerator; on CPUs, as many as still let one full-length trial
    finish within :data:`DEPTH_SHARE` of the training time (CPU trials share the cores)."""
    if inputs.explicit_max_concurrent is not None:
        return inputs.explicit_max_concurrent
    if inputs.accelerators:
        return max(1, inputs.accelerators)
    fits = [
        k
        for k in range(1, max(inputs.slots, 1) + 1)
        if full_epochs * inputs.epoch_s * k <= DEPTH_SHARE * training_s
    ]
    return max(fits, default=1)


def plan_search(inputs: PlanInputs) -> SearchPlan:
    """The plan for ``inputs``; :class:`~ffdi_tune.errors.SearchError` when the budget cannot fit
    even one full-length trial."""
    # The final stage's share grows with the trials it scores, and fewer trials fit as it grows:
    # plan for the most trials n whose own share still leaves room for n of them.
    plan = _plan_with_reserve(inputs, _final_reserve(inputs, 1), MAX_PLANNED_TRIALS)  # or raise
    low, high = 1, min(plan.num_samples, MAX_PLANNED_TRIALS)
    while low < high:
        middle = (low + high + 1) // 2
        if _trials_that_fit(inputs, middle) >= middle:
            low = middle
        else:
            high = middle - 1
    return _plan_with_reserve(inputs, _final_reserve(inputs, low), low)


def _trials_that_fit(inputs: PlanInputs, members: int) -> int:
    """Trials the budget fits when the final stage keeps the share of ``members`` members."""
    try:
        return _plan_with_reserve(
            inputs, _final_reserve(inputs, members), MAX_PLANNED_TRIALS
        ).num_samples
    except SearchError:
        return 0


def _plan_with_reserve(inputs: PlanInputs, reserve: float, most_trials: int) -> SearchPlan:
    training_s = (inputs.budget_s - inputs.used_s - reserve) * (1 - MARGIN)
    full_epochs = _full_epochs(inputs, training_s)
    full_s = full_epochs * inputs.epoch_s
    if training_s < full_s:
        raise SearchError(
            f"the time budget ({format_duration(inputs.budget_s)}) leaves "
            f"{format_duration(max(training_s, 0))} for training after the set-up "
            f"({format_duration(inputs.used_s)}) and the final stage "
            f"({format_duration(reserve)}), but one full-length trial of {full_epochs} "
            f"epochs takes about {format_duration(full_s)}; raise --time-budget to at least "
            f"{format_duration(inputs.budget_s + (full_s - training_s) / (1 - MARGIN))} or lower "
            "train.epochs"
        )
    concurrency = _concurrency(inputs, full_epochs, training_s)
    # CPU trials share the cores: k at once each run k times slower
    slowdown = 1 if inputs.accelerators else concurrency
    trial_epoch_s = inputs.epoch_s * slowdown
    if inputs.asha:
        rungs = rung_epochs(inputs.grace_period, inputs.reduction_factor, full_epochs)
        per_trial = expected_epochs_per_trial(rungs, inputs.reduction_factor)
    else:
        rungs, per_trial = [full_epochs], float(full_epochs)
    # the default recipe trains to full length; the others as ASHA lets them
    left_s = training_s * concurrency - full_epochs * trial_epoch_s - inputs.trial_start_s
    others_epoch_s = (inputs.others_epoch_s or inputs.epoch_s) * slowdown
    sampled = math.floor(max(left_s, 0) / (per_trial * others_epoch_s + inputs.trial_start_s))
    num_samples = inputs.explicit_num_samples or min(1 + sampled, most_trials)
    notes = []
    if num_samples < inputs.top_k:
        notes.append(f"fewer trials ({num_samples}) than top_k ({inputs.top_k})")
    return SearchPlan(
        num_samples=num_samples,
        max_concurrent=min(concurrency, num_samples),
        cpus_per_trial=None if inputs.accelerators else max(1, inputs.slots // concurrency),
        rungs=rungs,
        max_epochs=full_epochs,
        final_reserve_s=reserve,
        training_s=training_s,
        trial_epoch_s=trial_epoch_s,
        expected_best_epochs=full_epochs,
        eval_image_s=inputs.eval_image_s,
        first_rung_s=rungs[0] * others_epoch_s + inputs.trial_start_s,
        notes=notes,
    )


def _probe_folder(cfg: SearchConfig) -> Path:
    return cache_dir_of(cfg.data) or default_cache_dir()


def _backbone_constants(cfg: SearchConfig, backbone: str) -> dict:
    """A trial of ``backbone`` as the probe sees it: the backbone and its constant overrides."""
    overrides = cfg.per_backbone.get(backbone, {})
    return {
        "backbone": backbone,
        **{k: v for k, v in overrides.items() if not isinstance(v, Domain)},
    }


def plan_inputs(
    cfg: SearchConfig,
    check: DataCheck,
    used_s: float,
    final_stage_passes: int,
    final_stage_pool: int | None,
    echo=print,
) -> PlanInputs:
    """Probe the default recipe and each other backbone at its size on this machine (before Ray
    starts), and gather what :func:`plan_search` needs."""
    train_images = check.summary["train"]["images"]
    # the selection part of valset, scored every epoch (twice with the perturbed copy)
    selection = round(check.summary["val"]["images"] * (1 - cfg.search.holdout.fraction))
    eval_images = selection * (2 if cfg.robust_val.enabled else 1)
    default = trial_settings(cfg.train, default_point(cfg))
    settings = [
        default,
        *(trial_settings(default, _backbone_constants(cfg, b)) for b in cfg.backbones()[1:]),
    ]
    probes = [probe_cached(one, _probe_folder(cfg), echo) for one in settings]
    # each epoch scores the raw weights, and the EMA's too where the recipe keeps one
    epochs_s = [
        p.epoch_s(train_images, eval_images * (1 + (one.ema_decay is not None)))
        for p, one in zip(probes, settings, strict=True)
    ]
    accelerators = torch.cuda.device_count()
    explicit = cfg.search.model_fields_set
    full_epochs = cfg.scheduler.max_epochs or cfg.max_epochs() if _epochs_written(cfg) else None
    return PlanInputs(
        budget_s=float(cfg.search.time_budget),
        used_s=used_s + RAY_START_S,
        epoch_s=epochs_s[0],
        eval_image_s=probes[0].eval_image_s,
        final_images=check.summary["val"]["images"] + check.summary["test"]["images"],
        final_passes=final_stage_passes,
        full_epochs=full_epochs,
        slots=accelerators or available_cpus(),
        accelerators=accelerators,
        pool=final_stage_pool,
        grace_period=cfg.scheduler.grace_period,
        asha=cfg.scheduler.type == "asha",
        reduction_factor=cfg.scheduler.reduction_factor,
        explicit_num_samples=cfg.search.num_samples if "num_samples" in explicit else None,
        explicit_max_concurrent=(
            cfg.search.max_concurrent if "max_concurrent" in explicit else None
        ),
        others_epoch_s=sum(epochs_s) / len(epochs_s),
    )


def _epochs_written(cfg: SearchConfig) -> bool:
    """Whether the user set the recipe's length (``train.epochs``, searched or per backbone, or
    ``scheduler.max_epochs``); else the plan chooses it."""
    written = "epochs" in cfg.train.model_fields_set or "epochs" in cfg.space
    per_backbone = any("epochs" in o for o in cfg.per_backbone.values())
    return written or per_backbone or cfg.scheduler.max_epochs is not None


def apply_plan(cfg: SearchConfig, plan: SearchPlan) -> SearchConfig:
    """``cfg`` with the plan's trials, concurrency, rung horizon and (on CPUs) cores per trial;
    what the user wrote stays (:func:`plan_inputs` kept their trials and concurrency)."""
    search = cfg.search.model_copy(
        update={"num_samples": plan.num_samples, "max_concurrent": plan.max_concurrent}
    )
    update = {"search": search}
    if not _epochs_written(cfg):
        update["train"] = cfg.train.model_copy(update={"epochs": plan.max_epochs})
    if cfg.scheduler.max_epochs is None:
        update["scheduler"] = cfg.scheduler.model_copy(update={"max_epochs": plan.max_epochs})
    if "cpu" not in cfg.resources.model_fields_set and plan.cpus_per_trial is not None:
        update["resources"] = cfg.resources.model_copy(update={"cpu": float(plan.cpus_per_trial)})
    return cfg.model_copy(update=update)


def plan_for_run(
    cfg: SearchConfig,
    out_dir: Path,
    resume: bool,
    check: DataCheck,
    used_s: float,
    final_stage: tuple[int, int | None],
    echo=print,
) -> tuple[SearchConfig, SearchPlan | None]:
    """The config a search runs with: planned from its time budget on its first run (probed,
    printed, kept in ``plan.json``), the same plan on a resume; unchanged without a budget."""
    kept = Path(out_dir) / PLAN_FILE
    if resume:
        if not kept.is_file():
            return cfg, None
        plan = SearchPlan(**json.loads(kept.read_text()))
        return apply_plan(cfg, plan), plan
    if not cfg.search.time_budget:
        return cfg, None
    inputs = plan_inputs(cfg, check, used_s, *final_stage, echo)
    plan = plan_search(inputs)
    echo(plan.describe())
    for note in plan.notes:
        echo(f"plan: note: {note}")
    write_atomic(kept, json.dumps(plan.as_dict(), indent=1))
    return apply_plan(cfg, plan), plan
