"""The final stage: from finished trials in MLflow to a submission CSV, a report and an MLflow run.

Works from the tracking store alone (trial runs and their ``checkpoint/best.pt`` artifacts), so it
runs right after a search or later on any machine that reaches the store.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError

from ffdi_tune import tracking
from ffdi_tune.config import format_validation_error
from ffdi_tune.data.check import DataCheck, check_dataset
from ffdi_tune.data.holdout import split_valset, unrecorded_split
from ffdi_tune.data.perturb import Perturber, RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.build import EnsembleResult, MemberPredictions, build_ensemble
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.errors import ConfigError, DataError
from ffdi_tune.files import write_atomic
from ffdi_tune.report import plot_roc
from ffdi_tune.scoring.epoch_metrics import best_value, higher_is_better, robust_metrics
from ffdi_tune.scoring.inference import probability
from ffdi_tune.scoring.predict import DecodedSplits, load_member, predict_views
from ffdi_tune.tracking import DATA_ROOT, Tracker, TrialRecord

__all__ = [
    "EnsembleOutcome",
    "run_ensemble",
    "candidate_runs",
    "scoring_pool",
    "score_candidates",
    "search_config",
    "search_data",
    "search_robust_val",
    "search_holdout",
    "predict_run",
    "submission_text",
]


@dataclass
class EnsembleOutcome:
    result: EnsembleResult
    submission: Path
    run_id: str
    n_test: int


def submission_text(names: tuple[str, ...], prob: np.ndarray) -> str:
    """``img_name,y_pred`` CSV text; refuses NaN or values outside [0, 1].

    Each value is written with as many digits as it takes to read back the same float64, so two
    different scores are never written alike (rounding to a fixed 6 decimals would tie confident
    images, which decides AUC and TPR at low FPR).
    """
    prob = np.asarray(prob, dtype=np.float64)
    if len(prob) != len(names) or not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("submission probabilities must be finite, in [0, 1], one per test image")
    # repr: round trip
    return pd.DataFrame({"img_name": list(names), "y_pred": prob}).to_csv(index=False)


def candidate_runs(
    tracker: Tracker, recipe: EnsembleRecipe, experiments: list[str]
) -> list[TrialRecord]:
    """The FINISHED trial runs of ``experiments`` that pass the recipe's filter (at least top_k)."""
    keep = [
        r
        for r in tracker.finished_trials(experiments)
        if r.epochs_run >= recipe.candidates.min_epochs
        and (recipe.candidates.include_stopped or not (r.stopped_early or r.budget_cut))
    ]
    if not keep:
        raise ConfigError(
            f"no finished trials in {', '.join(experiments)} pass the recipe's candidates filter; "
            "let a search finish trials first or loosen candidates"
        )
    if recipe.top_k > len(keep):
        raise ConfigError(
            f"top_k={recipe.top_k}, but only {len(keep)} finished trial(s) qualify in "
            f"{', '.join(experiments)}; lower top_k or run more trials"
        )
    return keep


def scoring_pool(
    tracker: Tracker, recipe: EnsembleRecipe, runs: list[TrialRecord]
) -> list[TrialRecord]:
    """The ``recipe.pool_size`` runs with the best value their search logged for the recipe's
    metric (each epoch's, on the selection part of valset), best first; all of them when the pool
    holds every one. A run without that metric goes last."""
    size = recipe.pool_size
    if size is None or len(runs) <= size:
        return runs
    metric, sign = recipe.metric, (1.0 if higher_is_better(recipe.metric) else -1.0)

    def order(r: TrialRecord) -> tuple[bool, float]:
        values = [v for v in tracker.metric_values(r.run_id, metric) if math.isfinite(v)]
        best = best_value(metric, values)
        return (not math.isfinite(best), -sign * best if math.isfinite(best) else 0.0)

    ranked = sorted(runs, key=order)  # stable: equals keep the store's order
    return ranked[:size]


def score_candidates(
    tracker: Tracker,
    runs: list[TrialRecord],
    splits: DecodedSplits,
    tta: list[str],
    batch_size: int = 64,
    echo=print,
    perturb=None,
) -> list[MemberPredictions]:
    """Every run's probabilities on val and test for identity plus each view of ``tta``.

    With ``perturb`` (a :class:`~ffdi_tune.data.perturb.Perturber`), also on the perturbed copy of
    val.
    """
    views = ["identity"] + [v for v in tta if v != "identity"]
    candidates = []
    with tempfile.TemporaryDirectory(prefix="ffdi-ensemble-") as tmp:
        for r in runs:
            path = tracker.download(r.run_id, "checkpoint/best.pt", Path(tmp) / r.run_id)
            member = load_member(path, r.run_id)
            val = predict_views(member, splits.images("val", member.img_size), views, batch_size)
            test = predict_views(member, splits.images("test", member.img_size), views, batch_size)
            robust = (
                predict_views(
                    member, splits.images("val", member.img_size, perturb), views, batch_size
                )
                if perturb is not None
                else None
            )
            label = f"{r.params.get('backbone', '?')} {r.run_name}"
            candidates.append(MemberPredictions(r.run_id, label, views, val, test, robust))
            echo(f"scored {label}")
    return candidates


def search_config(tracker: Tracker, experiment: str) -> dict:
    """The resolved YAML the search ``experiment`` ran with, parsed (empty when none is logged)."""
    text = tracker.search_config_text(experiment)
    raw = yaml.safe_load(text) if text else None
    return raw if isinstance(raw, dict) else {}


def search_data(config: dict, root: str, on_bad_image: str = "error") -> DataConfig:
    """The data section of a search's ``config`` (layout names, exclusions), at ``root``."""
    section = config.get("data") if isinstance(config.get("data"), dict) else {}
    # The demo generator and a cache folder belong to the machine that searched, not this one.
    keep = {k: v for k, v in section.items() if k not in ("root", "demo", "cache_dir")}
    try:
        return DataConfig.model_validate({"on_bad_image": on_bad_image, **keep, "root": root})
    except ValidationError:
        return DataConfig(root=root, on_bad_image=on_bad_image)


def search_robust_val(config: dict, experiment: str) -> RobustValConfig:
    """The perturbation recipe the search ``experiment`` (its ``config``) scored with; default when
    none."""
    recorded = config.get("robust_val")
    try:
        recipe = (
            RobustValConfig.model_validate(recorded)
            if isinstance(recorded, dict)
            else RobustValConfig()
        )
    except ValidationError as exc:
        raise ConfigError(
            f"search {experiment!r}: {format_validation_error('robust_val', exc)}; rank with "
            "metric val_auc, or rerun the search with a valid robust_val"
        ) from None
    return recipe.model_copy(update={"enabled": True})


def search_holdout(searches: dict[str, dict[str, str]]) -> tuple[float, int, str]:
    """(fraction, seed, report hash) of the valset split the pooled searches share.

    Searches whose splits differ cannot be pooled honestly (one's report part may be another's
    selection part): that is a one-line error. A search that recorded no split (made by an older
    version, which chose on all of valset) counts as ``fraction 0``.
    """
    recorded = {
        name: tracking.holdout_from_tags(t) or unrecorded_split() for name, t in searches.items()
    }
    splits = {name: (s["fraction"], s["seed"], s["report_hash"]) for name, s in recorded.items()}
    first, (fraction, seed, digest) = next(iter(splits.items()))
    for name, (f, sd, h) in splits.items():
        if h != digest:
            raise ConfigError(
                f"searches {first!r} and {name!r} split valset differently (fraction {fraction:g} "
                f"seed {seed}, report part {digest}; fraction {f:g} seed {sd}, report part {h}), "
                "so neither report part is unseen by the other's trials; ensemble them "
                "separately, or rerun one with the other's search.holdout"
            )
    return fraction, seed, digest


def _same_data_as_searches(check: DataCheck, searches: dict[str, dict[str, str]]) -> None:
    """Refuse val/test files that changed since a search at the same root fingerprinted them."""
    here = Path(check.data.root).resolve()
    for name, t in searches.items():
        if not t.get(DATA_ROOT) or Path(t[DATA_ROOT]).resolve() != here:
            continue  # another root is scored on purpose
        for split in ("val", "test"):
            then, now = (
                t.get(f"{tracking.FINGERPRINT_PREFIX}{split}"),
                check.fingerprints.get(split),
            )
            if then and now and then != now:
                raise DataError(
                    f"{split}set in {here} changed since search {name!r} ran (images added, "
                    f"removed, rewritten or relabelled: fingerprint {then} then, {now} now); "
                    "restore it, or pass --allow-changed-data to score the files as they are now"
                )


def run_ensemble(
    recipe: EnsembleRecipe,
    experiments: list[str],
    tracker: Tracker,
    *,
    data_root: str | None = None,
    out: str | Path | None = None,
    parent_run_id: str | None = None,
    recipe_name: str = "ensemble",
    allow_changed_data: bool = False,
    echo=print,
) -> EnsembleOutcome:
    """Score every qualifying trial on val and test, build the ensemble, write and log it.

    ``data_root`` defaults to the one recorded on the first search; ``out`` to the recipe's
    ``output``, then ``runs/<first experiment>/submission.csv``. Val and test files that changed
    since a search at the same root ran are refused unless ``allow_changed_data``.
    """
    if not experiments:
        raise ConfigError(
            f"{recipe_name}: no searches to pool trials from; pass --experiment NAME "
            "or list them under experiments:"
        )
    qualifying = candidate_runs(tracker, recipe, experiments)
    runs = scoring_pool(tracker, recipe, qualifying)
    if len(runs) < len(qualifying):
        echo(
            f"scoring the best {len(runs)} of {len(qualifying)} qualifying trials by their "
            f"logged {recipe.metric} (candidates.pool)"
        )
    searches = {name: tracker.search_tags(name) for name in experiments}
    if data_root is None:
        data_root = searches[experiments[0]].get(DATA_ROOT)
        if data_root is None:
            raise ConfigError(
                f"no data root is recorded for search {experiments[0]!r}; pass --data DIR"
            )
    # Only val and test are read: trainset need not be on this machine.
    # the first search's layout and perturbation recipe
    config = search_config(tracker, experiments[0])
    data = search_data(
        config, data_root, searches[experiments[0]].get(tracking.ON_BAD_IMAGE, "error")
    )
    check = check_dataset(data, splits=("val", "test"))
    if not allow_changed_data:
        _same_data_as_searches(check, searches)
    out = Path(out or recipe.output or Path("runs") / experiments[0] / "submission.csv")
    splits = DecodedSplits(check.data)
    fraction, seed, recorded = search_holdout(searches)
    val = splits.split("val")
    holdout = split_valset(val, fraction, seed)
    if holdout.report_hash != recorded and not allow_changed_data:
        raise DataError(
            f"valset's report part is not the one search {experiments[0]!r} kept aside (hash "
            f"{recorded} then, {holdout.report_hash} now: images added, removed or renamed); "
            "restore valset, or pass --allow-changed-data to split the current valset the same "
            "way (its estimate is then less sure)"
        )
    # A robust metric ranks on the perturbed valset the (first) search's trials were scored on.
    needs_perturbed = recipe.metric in robust_metrics()
    robust = search_robust_val(config, experiments[0]) if needs_perturbed else None
    candidates = score_candidates(
        tracker,
        runs,
        splits,
        recipe.tta,
        recipe.batch_size,
        echo,
        Perturber(robust) if robust is not None else None,
    )
    result = build_ensemble(candidates, val.targets, recipe, *holdout.indices(val.names))
    test = splits.split("test")
    text = submission_text(test.names, result.test_pred)

    with tempfile.TemporaryDirectory(prefix="ffdi-report-") as tmp:
        members_csv = Path(tmp) / "members.csv"
        result.table.to_csv(members_csv, index=False)
        figures = [plot_roc(result, Path(tmp) / "roc.png")] if result.honest else []
        sub = write_atomic(Path(tmp) / "submission.csv", text)
        params = {
            "recipe": recipe_name,
            "experiments": ",".join(experiments),
            "combine": recipe.combine,
            "average": recipe.average,
            "top_k": recipe.top_k,
            "metric": recipe.metric,
            "tta": ",".join(recipe.tta),
            "tta_select": recipe.tta_select,
            "holdout_fraction": fraction,
            "holdout_seed": seed,
            "members": ",".join(result.members),
            "weights": ",".join(f"{result.weights[m]:.4f}" for m in result.members),
            "member_views": ",".join("+".join(result.views[m]) for m in result.members),
        }
        if robust is not None:
            params["robust_val"] = robust.model_dump_json()
        exp_id = tracker.experiment_id(experiments[0], create=False)
        run_tags = {tracking.COMBINE_CHOSEN: result.chosen, **tracking.holdout_tags(holdout)}
        run_id = tracker.ensemble_run(
            exp_id,
            f"ensemble-{result.chosen}",
            parent_run_id,
            params,
            result.metrics,
            [sub, members_csv, *figures],
            run_tags,
        )
    # The submission lands last, in one rename: a failure above leaves no CSV behind.
    submission = write_atomic(out, text)
    return EnsembleOutcome(result, submission, run_id, len(test))


def predict_run(
    tracker: Tracker,
    run_id: str,
    data: DataConfig,
    views: list[str],
    out: Path,
    batch_size: int = 64,
) -> Path:
    """Score the test split with one trial's best checkpoint (mean over ``views``)."""
    splits = DecodedSplits(data)
    test = splits.split("test")
    with tempfile.TemporaryDirectory(prefix="ffdi-predict-") as tmp:
        member = load_member(tracker.download(run_id, "checkpoint/best.pt", Path(tmp)), run_id)
        prob = probability(
            predict_views(member, splits.images("test", member.img_size), views, batch_size).mean(0)
        )
    return write_atomic(out, submission_text(test.names, prob))
