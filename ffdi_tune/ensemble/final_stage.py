"""The final stage: from finished trials in MLflow to a submission CSV, a report and an MLflow run.

Works from the tracking store alone (trial runs and their ``checkpoint/best.pt`` artifacts, and
what the search recorded: :mod:`ffdi_tune.ensemble.search_record`), so it runs right after a search
or later on any machine that reaches the store. :func:`run_ensemble` goes step by step: the trials
to score, the data and valset split the search used, every candidate's log-odds per TTA view,
:func:`~ffdi_tune.ensemble.build.build_ensemble`, the ensemble run, then the submission.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ffdi_tune import tracking
from ffdi_tune.data.check import check_dataset
from ffdi_tune.data.holdout import Holdout, split_from_report_names, split_valset
from ffdi_tune.data.layout import Split
from ffdi_tune.data.perturb import Perturber, RobustValConfig
from ffdi_tune.ensemble.build import EnsembleResult, MemberPredictions, build_ensemble
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.ensemble.refit import Refitter, refit_jobs, refit_result
from ffdi_tune.ensemble.search_record import (
    check_data_unchanged,
    recorded_data_root,
    recorded_holdout,
    search_config,
    search_data,
    search_robust_val,
)
from ffdi_tune.ensemble.soup import Soup, make_soups
from ffdi_tune.ensemble.submission import submission_text
from ffdi_tune.errors import ConfigError, DataError
from ffdi_tune.files import write_atomic
from ffdi_tune.report import plot_roc
from ffdi_tune.scoring.epoch_metrics import best_value, higher_is_better, robust_metrics
from ffdi_tune.scoring.metrics import misordered_pairs_removed
from ffdi_tune.scoring.predict import DecodedSplits, load_member
from ffdi_tune.tracking import Tracker, TrialRecord

__all__ = [
    "EnsembleOutcome",
    "run_ensemble",
    "candidate_runs",
    "scoring_pool",
    "score_candidates",
    "plot_report_roc",
]


@dataclass
class EnsembleOutcome:
    """What :func:`run_ensemble` made: the ensemble, the submission it wrote, its MLflow run."""

    result: EnsembleResult
    submission: Path
    run_id: str
    n_test: int  # rows in the submission
    # the shipped ensemble against the search's default recipe, on the selection part (one line)
    against_default: str | None = None


def candidate_runs(
    tracker: Tracker, recipe: EnsembleRecipe, experiments: list[str]
) -> list[TrialRecord]:
    """The FINISHED trial runs of ``experiments`` that pass the recipe's filter (at least one;
    fewer than top_k when a budget ended the search early: the final stage uses those)."""
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
    # the default recipe is always a candidate: the search can then only add to it
    defaults = [r for r in ranked[size:] if r.default_recipe]
    return ranked[: size - len(defaults)] + defaults


def score_candidates(
    tracker: Tracker,
    runs: list[TrialRecord],
    splits: DecodedSplits,
    tta: list[str],
    batch_size: int = 64,
    echo=print,
    perturb=None,
) -> list[MemberPredictions]:
    """Every run's log-odds of fake on val and test for identity plus each view of ``tta``.

    With ``perturb`` (a :class:`~ffdi_tune.data.perturb.Perturber`), also on the perturbed copy of
    val.
    """
    views = ["identity"] + [v for v in tta if v != "identity"]
    candidates = []
    with tempfile.TemporaryDirectory(prefix="ffdi-ensemble-") as tmp:
        for r in runs:
            label = f"{r.params.get('backbone', '?')} {r.run_name}"
            label += " (default recipe)" if r.default_recipe else ""
            candidates.append(
                _score_run(tracker, r.run_id, label, splits, views, batch_size, perturb, Path(tmp))
            )
            echo(f"scored {label}")
    return candidates


def _score_run(
    tracker: Tracker,
    run_id: str,
    label: str,
    splits: DecodedSplits,
    views: list[str],
    batch_size: int,
    perturb,
    tmp: Path,
) -> MemberPredictions:
    """One run's ``checkpoint/best.pt`` scored on val and test (and perturbed val) per view."""
    path = tracker.download(run_id, "checkpoint/best.pt", tmp / run_id)
    member = load_member(path, run_id)
    return MemberPredictions(
        run_id, label, views, *splits.score(member, views, batch_size, perturb)
    )


def _refit(
    refitter: Refitter | None,
    recipe: EnsembleRecipe,
    result: EnsembleResult,
    tracker: Tracker,
    candidates: list[MemberPredictions],
    splits: DecodedSplits,
    holdout: Holdout,
    where: tuple[dict, str],
    echo,
) -> EnsembleResult:
    """With the recipe's ``refit``: the shipped members trained again by ``refitter`` (``where``:
    the search's recorded config and the data root), scored, and shipped in their place."""
    if recipe.refit is None:
        return result
    if refitter is None:
        raise ConfigError(
            "the recipe asks for refit, which trains the members again as trials; run it with "
            "ffdi-tune run or ffdi-tune ensemble, or remove refit"
        )
    jobs = refit_jobs(tracker, result.members, recipe.refit.seeds)
    refits = refitter(jobs, holdout.select_names, *where)
    if not any(refits.values()):
        echo("refit: no refit trained to its end; the search's models ship")
        return result
    views = candidates[0].views
    scored = {c.name: c for c in candidates}
    with tempfile.TemporaryDirectory(prefix="ffdi-refit-") as tmp:
        for member, runs in refits.items():
            for run in runs:
                label = f"refit of {member[:12]}"
                scored[run] = _score_run(
                    tracker, run, label, splits, views, recipe.batch_size, None, Path(tmp)
                )
                echo(f"scored {label} ({run[:12]})")
    for member in result.members:
        if not refits.get(member):
            echo(f"refit: {member[:12]} keeps the search's model (its refits failed or were cut)")
    val = splits.split("val")
    _, report = holdout.indices(val.names)
    return refit_result(result, refits, scored, val.targets, report)


def _all_candidates(
    tracker: Tracker,
    recipe: EnsembleRecipe,
    runs: list[TrialRecord],
    splits: DecodedSplits,
    select,
    perturb,
    echo,
) -> tuple[list[MemberPredictions], dict[str, Soup]]:
    """Every run's predictions, and with ``combine`` soup or auto the greedy weight soups of the
    runs that share their pretrained weights (name -> soup)."""
    candidates = score_candidates(
        tracker, runs, splits, recipe.tta, recipe.batch_size, echo, perturb
    )
    if not recipe.soups:
        return candidates, {}
    views = candidates[0].views
    made = make_soups(tracker, runs, splits, select, views, recipe.batch_size, perturb, echo)
    return candidates + [p for _, p in made], {soup.name: soup for soup, _ in made}


def plot_report_roc(result: EnsembleResult, path: Path) -> Path:
    """The ROC figure of the shipped members (run ids cut to 8 characters) and of the ensemble, in
    bold, on the report part."""
    curves = {}
    for name, scores in result.member_report_preds.items():
        curves[name if name[:8] in curves else name[:8]] = scores
    curves["ensemble"] = result.report_pred
    return plot_roc(
        result.report_targets, curves, path, bold="ensemble", title="ROC on the report half"
    )


def _runs_to_score(
    tracker: Tracker, recipe: EnsembleRecipe, experiments: list[str], echo
) -> list[TrialRecord]:
    """The qualifying trials, cut to the recipe's scoring pool (said when it cuts)."""
    qualifying = candidate_runs(tracker, recipe, experiments)
    runs = scoring_pool(tracker, recipe, qualifying)
    if len(runs) < len(qualifying):
        echo(
            f"scoring the best {len(runs)} of {len(qualifying)} qualifying trials by their "
            f"logged {recipe.metric} (candidates.pool)"
        )
    if len(qualifying) < recipe.top_k:
        echo(
            f"only {len(qualifying)} finished trial(s) qualify for top_k={recipe.top_k}: the "
            "ensemble is built from those"
        )
    return runs


def _short_of_top_k(recipe: EnsembleRecipe, n_runs: int) -> tuple[dict, EnsembleRecipe]:
    """A budget that ended the search early ships what finished: fewer members than top_k, said
    in a tag; the recipe with its top_k cut to what there is."""
    short = {tracking.MEMBERS_SHORT: f"{n_runs} of {recipe.top_k}"} if n_runs < recipe.top_k else {}
    return short, recipe.model_copy(update={"top_k": min(recipe.top_k, n_runs)})


def against_default(result: EnsembleResult, runs: list[TrialRecord]) -> str | None:
    """The shipped ensemble against the default recipe's trial on the selection part, as metrics
    added to ``result.metrics`` and one line; None when no candidate is the default recipe."""
    default = next((r for r in runs if r.default_recipe), None)
    if default is None:
        return None
    row = result.table[result.table["member"] == default.run_id].iloc[0]
    # with the views chosen for it (identity alone, or every view)
    base = float(row["select_auc_tta"] if "+" in row["views"] else row["select_auc_no_tta"])
    shipped = result.metrics[tracking.SELECT_AUC]
    result.metrics[tracking.DEFAULT_RECIPE_SELECT_AUC] = base
    result.metrics[tracking.SEARCH_GAIN_SELECT_AUC] = shipped - base
    fewer = misordered_pairs_removed(shipped, base)
    pairs = f"{abs(fewer):.0%} {'fewer' if fewer >= 0 else 'more'} mis-ordered pairs"
    return (
        f"against the default recipe ({default.run_name}): selection-part AUC {base:.4f} -> "
        f"shipped {shipped:.4f} ({shipped - base:+.4f}, {pairs})"
    )


def _checked_splits(
    config: dict,
    data_root: str,
    searches: dict[str, dict[str, str]],
    first: str,
    allow_changed_data: bool,
) -> DecodedSplits:
    """Val and test at ``data_root``, laid out as the first search's ``config`` says, checked
    against the fingerprints the searches recorded."""
    on_bad_image = searches[first].get(tracking.ON_BAD_IMAGE, "error")
    # Only val and test are read: trainset need not be on this machine.
    check = check_dataset(search_data(config, data_root, on_bad_image), splits=("val", "test"))
    if not allow_changed_data:
        check_data_unchanged(check, searches)
    return DecodedSplits(check.data)


def _valset_split(
    val: Split,
    searches: dict[str, dict[str, str]],
    first: str,
    allow_changed_data: bool,
    recorded_names=None,
    echo=print,
) -> Holdout:
    """Valset split again as the searches split it. A report part that changed since is refused
    unless ``allow_changed_data``; then the report part is the recorded report images still
    present (``recorded_names()``: the names the first search recorded, or None), every other
    image choosing; a search that recorded no names is split again with its seed."""
    fraction, seed, recorded = recorded_holdout(searches)
    holdout = split_valset(val, fraction, seed)
    if holdout.matches(recorded):
        return holdout
    if not allow_changed_data:
        raise DataError(
            f"valset's report part is not the one search {first!r} kept aside (hash "
            f"{recorded} then, {holdout.report_hash} now: images added, removed or renamed); "
            "restore valset, or pass --allow-changed-data to score only its recorded report "
            "images still present (its estimate is then on fewer images)"
        )
    names = recorded_names() if recorded_names is not None else None
    if names is None:
        echo(
            f"valset changed and search {first!r} recorded no report-part names: split again with "
            "its seed, so part of the new report part took part in choosing"
        )
        return holdout
    holdout, gone = split_from_report_names(val, names, fraction, seed)
    echo(
        f"valset changed: the report part is the {len(holdout.report_names)} recorded report "
        f"images still present ({gone} gone); the other {len(holdout.select_names)} choose"
    )
    return holdout


def _run_params(
    recipe: EnsembleRecipe,
    recipe_name: str,
    experiments: list[str],
    holdout: Holdout,
    result: EnsembleResult,
    perturbation: RobustValConfig | None,
    soup: Soup | None = None,
) -> dict:
    """The ensemble run's params: the recipe as written, the split, what shipped (with a soup's
    ingredients when a soup ships)."""
    params = {
        "recipe": recipe_name,
        "experiments": ",".join(experiments),
        "combine": recipe.combine,
        "average": recipe.average,
        "top_k": recipe.top_k,
        "metric": recipe.metric,
        "tta": ",".join(recipe.tta),
        "tta_select": recipe.tta_select,
        "holdout_fraction": holdout.fraction,
        "holdout_seed": holdout.seed,
        "members": ",".join(result.members),
        "weights": ",".join(f"{result.weights[m]:.4f}" for m in result.members),
        "member_views": ",".join("+".join(result.views[m]) for m in result.members),
    }
    if perturbation is not None:
        params["robust_val"] = perturbation.model_dump_json()
    if soup is not None:
        params["soup_ingredients"] = ",".join(soup.ingredients)
    if recipe.refit is not None:
        params["refit_seeds"] = recipe.refit.seeds
    return params


def _log_ensemble_run(
    tracker: Tracker,
    experiment: str,
    parent_run_id: str | None,
    params: dict,
    result: EnsembleResult,
    holdout: Holdout,
    submission: str,
    tags: dict[str, str],
    soup: Soup | None = None,
    example: tuple[Path, ...] = (),
) -> str:
    """The ensemble run, with the submission, the members table, (with a report part) the ROC
    figure and (when a soup ships) its weights as ``soup.pt`` as artifacts, ``tags`` besides its
    own, and the shipped ensemble as its pyfunc model (``example``: image paths for its input
    example); returns its id."""
    with tempfile.TemporaryDirectory(prefix="ffdi-report-") as tmp:
        members_csv = Path(tmp) / "members.csv"
        _marked(result.table).to_csv(members_csv, index=False)
        figures = [plot_report_roc(result, Path(tmp) / "roc.png")] if result.honest else []
        sub = write_atomic(Path(tmp) / "submission.csv", submission)
        if soup is not None:
            torch.save(soup.checkpoint, Path(tmp) / "soup.pt")
            figures.append(Path(tmp) / "soup.pt")
        model = _model_spec(tracker, result, soup, Path(tmp), example)
        return tracker.ensemble_run(
            tracker.experiment_id(experiment, create=False),
            f"ensemble-{result.chosen}",
            parent_run_id,
            params,
            result.metrics,
            [sub, members_csv, *figures],
            {tracking.COMBINE_CHOSEN: result.chosen, **tracking.holdout_tags(holdout), **tags},
            model=model,
        )


def _model_spec(
    tracker: Tracker, result: EnsembleResult, soup: Soup | None, tmp: Path, example
) -> dict:
    """What the pyfunc model is made of: each shipped member's best.pt (downloaded again; a
    soup's saved), views and weight (and, on the rank scale, its testset log-odds: the references
    it ranks new images among), the scale, example images."""
    members = []
    for name in result.members:
        if soup is not None and name == soup.name:
            checkpoint = tmp / "soup.pt"
        else:
            checkpoint = tracker.download(name, "checkpoint/best.pt", tmp / "members" / name)
        views, weight = result.views[name], result.weights[name]
        member = {"name": name, "checkpoint": checkpoint, "views": views, "weight": weight}
        if result.scale == "rank":
            member["reference"] = result.member_test_preds[name]
        members.append(member)
    return {"members": members, "scale": result.scale, "example": [str(p) for p in example]}


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
    refitter: Refitter | None = None,
    echo=print,
) -> EnsembleOutcome:
    """Score every qualifying trial on val and test, build the ensemble, write and log it.

    ``data_root`` defaults to the one recorded on the first search; ``out`` to the recipe's
    ``output``, then ``runs/<first experiment>/submission.csv``. Val and test files that changed
    since a search at the same root ran are refused unless ``allow_changed_data``. A recipe with
    ``refit`` trains the shipped members again through ``refitter``.
    """
    if not experiments:
        raise ConfigError(
            f"{recipe_name}: no searches to pool trials from; pass --experiment NAME "
            "or list them under experiments:"
        )
    first = experiments[0]
    runs = _runs_to_score(tracker, recipe, experiments, echo)
    short, recipe = _short_of_top_k(recipe, len(runs))
    searches = {name: tracker.search_tags(name) for name in experiments}
    if data_root is None:
        data_root = recorded_data_root(searches[first], first)
    config = search_config(tracker, first)  # the first search's layout and perturbation recipe
    splits = _checked_splits(config, data_root, searches, first, allow_changed_data)
    val = splits.split("val")
    holdout = _valset_split(
        val, searches, first, allow_changed_data, lambda: tracker.search_report_names(first), echo
    )
    # A robust metric ranks on the perturbed valset the first search's trials were scored on.
    perturbation = search_robust_val(config, first) if recipe.metric in robust_metrics() else None
    perturb = Perturber(perturbation) if perturbation is not None else None
    select, report = holdout.indices(val.names)
    candidates, soups = _all_candidates(tracker, recipe, runs, splits, select, perturb, echo)
    result = build_ensemble(candidates, val.targets, recipe, select, report)
    comparison = against_default(result, runs)
    where = (config, data_root)
    result = _refit(refitter, recipe, result, tracker, candidates, splits, holdout, where, echo)
    test = splits.split("test")
    text = submission_text(test.names, result.test_pred)
    shipped_soup = soups.get(result.members[0]) if len(result.members) == 1 else None
    params = _run_params(
        recipe, recipe_name, experiments, holdout, result, perturbation, shipped_soup
    )
    example = test.paths[:2]
    run_id = _log_ensemble_run(
        tracker, first, parent_run_id, params, result, holdout, text, short, shipped_soup, example
    )
    # The submission lands last, in one rename: a failure above leaves no CSV behind.
    out = Path(out or recipe.output or Path("runs") / first / "submission.csv")
    submission = write_atomic(out, text)
    return EnsembleOutcome(result, submission, run_id, len(test), comparison)


def _marked(table):
    """The ensemble table for ``members.csv``, each row saying what its report-part AUCs are for."""
    return table.assign(
        holdout_note=[
            "the shipped ensemble's estimate"
            if shipped
            else "not for choosing: choosing on holdout_* spends the report part"
            for shipped in table["shipped"]
        ]
    )
