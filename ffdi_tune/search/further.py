"""Time to spare: when every planned trial ended before the budget did, the best configuration
trains further instead of the time being lost.

The best trial that ran all its epochs is continued from its checkpoint (weights, optimizer,
schedule, best epoch so far) by a new trial, in a round of its own (``<name>/further-<k>``), for as
many more epochs as the budget leaves before the final stage's share, at most as many again as it
ran. The new trial's run is tagged ``ffdi.continued_from`` with the trial it continues; both are
candidates of the final stage.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune

from ffdi_tune.config import SearchConfig
from ffdi_tune.scoring.epoch_metrics import best_value, higher_is_better
from ffdi_tune.search.callbacks import progress
from ffdi_tune.search.rounds import (
    checkpoint_location,
    fit_round,
    load_rounds,
    round_path,
    save_rounds,
    trials_and_results,
)
from ffdi_tune.search.searcher import BudgetStopper, LiveBudget
from ffdi_tune.search.space import CONTINUE_FROM_KEY, CONTINUED_TRIAL_KEY, MARKER_KEYS

__all__ = ["train_best_further"]

# of the spare time: the rest absorbs a worker's start-up and the last epoch's checkpoint
SPARE_SHARE = 0.9


def _best_finished(grids: list, metric: str, fixed: dict):
    """(trial, result) of the best trial by ``metric`` among those that ran every epoch they
    planned (not stopped by ASHA or cut by the budget); (None, None) when there is none."""

    def ran_all(trial, result) -> bool:
        history = result.metrics_dataframe
        ran, planned = progress(trial, fixed)
        usable = not result.error and result.checkpoint is not None and history is not None
        return trial.status == "TERMINATED" and usable and metric in history and ran >= planned

    finished = [
        (trial, result)
        for grid in grids
        for trial, result in trials_and_results(grid)
        if ran_all(trial, result)
    ]

    def best(pair) -> float:
        return best_value(metric, pair[1].metrics_dataframe[metric].dropna())

    ranked = sorted(finished, key=best, reverse=higher_is_better(metric))
    return ranked[0] if ranked else (None, None)


def train_best_further(
    cfg: SearchConfig,
    trainable,
    callbacks: list[tune.Callback],
    grids: list,
    exp_path: str,
    out_dir: Path,
    live: LiveBudget | None,
    epoch_s: float | None,
    echo=print,
) -> list:
    """Time a budget leaves once every planned trial ended goes to the best finished trial: a new
    trial continues it from its checkpoint for as many more epochs as fit (before the final
    stage's share). Returns the new round's ResultGrid in a list, or an empty list."""
    if live is None or not epoch_s:
        return []
    trial, result = _best_finished(grids, cfg.search.metric, cfg.train.model_dump())
    if trial is None:
        return []
    epochs = int(result.metrics["epoch"])
    # at most as long again: past that the recipe's schedule has long decayed
    fit = int((live.budget.remaining() - live.reserve()) * SPARE_SHARE // epoch_s)
    extra = min(fit, epochs)
    if extra < 1:
        return []
    config = {k: v for k, v in trial.config.items() if k not in MARKER_KEYS}
    config.update(
        {
            CONTINUE_FROM_KEY: checkpoint_location(result.checkpoint),
            CONTINUED_TRIAL_KEY: trial.trial_id,
            "epochs": epochs + extra,
        }
    )
    print(
        f"time to spare: trial {trial.trial_id} trains {extra} more epoch(s), to {epochs + extra}"
    )
    rounds = load_rounds(out_dir, exp_path)
    name = f"further-{len(rounds) + 1}"
    rounds.append(
        {
            "path": round_path(exp_path, name),
            "num_samples": 1,
            "finished": False,
            "further": True,
        }
    )
    save_rounds(out_dir, rounds)
    tuner = _one_trial_round(cfg, trainable, callbacks, exp_path, name, config)
    return [fit_round(tuner, rounds, out_dir, live)]


def _one_trial_round(
    cfg: SearchConfig, trainable, callbacks: list[tune.Callback], exp_path: str, name: str, config
) -> tune.Tuner:
    """A Tune experiment of the one trial ``config`` (no searcher, no ASHA), in the search."""
    return tune.Tuner(
        trainable,
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=cfg.search.reuse_actors),
        run_config=tune.RunConfig(
            name=name,
            storage_path=exp_path,
            verbose=1,
            callbacks=list(callbacks),
            stop=BudgetStopper(cfg.name),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        ),
    )
