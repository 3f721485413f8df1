"""Can the printed estimate be believed? The final stage's estimate against the real test AUC, with
the search choosing on all of valset (the old behaviour) and on its selection part only (the new
one).

Per search seed, the same small search runs twice on the demo data (2,000 valset and 2,000 labelled
testset images, so differences are above the noise):

- old: ``search.holdout.fraction: 0`` (every epoch, ASHA, TPE and ``best.pt`` see all of valset),
  every trial seeded 0, then the old final stage: valset split 50/50 afterwards, mean of the top 5;
- new: ``search.holdout.fraction: 0.5`` (the report part unseen by the search), a seed per trial,
  then the final stage as shipped (``combine: auto`` over the top 5).

Prints per seed the printed estimate (ensemble and best member), the real test AUC and their
difference, and the *unselected gap*: report-part AUC minus test AUC averaged over all trials,
whatever chose them, which is what these fixed valset and testset images differ by before any
selection (the same in every run, so averaging seeds does not shrink it). Then the noise level
(standard error of an AUC on the report part and on testset) and, on its last line, one JSON
object with ``mean_estimate_minus_test_old``, ``mean_estimate_minus_test_new``,
``auto_vs_best_member_test`` and ``selection_optimism_old`` / ``_new`` (estimate minus test
beyond the unselected gap). About 10 minutes on 2 cores for 6 seeds:

    python bench/honesty.py [--seeds 0 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ffdi_tune.config import parse_search_config
from ffdi_tune.data.holdout import split_valset
from ffdi_tune.data.layout import ensure_dataset
from ffdi_tune.ensemble.build import build_ensemble
from ffdi_tune.ensemble.final_stage import score_candidates
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.scoring.metrics import roc_auc
from ffdi_tune.scoring.predict import DecodedSplits
from ffdi_tune.search.runner import run_search
from ffdi_tune.tracking import Tracker, resolve_tracking

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "runs" / "honesty-data"
VIEWS = ["identity", "hflip"]


def space(name: str, search_seed: int, new: bool, work: Path) -> dict:
    return {
        "name": name,
        "data": {
            "root": str(DATA),
            "demo": {
                "n_train": 1000,
                "n_val": 2000,
                "n_test": 2000,
                "size": 64,
                "seed": 7,
                "difficulty": 0.5,
            },
        },
        "train": {
            "backbone": "test_resnet",
            "img_size": 64,
            "batch_size": 32,
            "epochs": 3,
            "weight_decay": 0.01,
            **({} if new else {"seed": 0}),
        },
        "space": {
            "lr": {"loguniform": [5e-4, 1e-2]},
            "augment": {"choice": ["flips", "color"]},
            "gamma": {"uniform": [0.3, 0.9]},
        },
        "search": {
            "num_samples": 8,
            "max_concurrent": 2,
            "seed": search_seed,
            "tpe_startup_trials": 4,
            "storage": str(work / "ray"),
            "holdout": {"fraction": 0.5 if new else 0.0, "seed": 0},
        },
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "robust_val": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{work}/mlflow.db"},
    }


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982): the standard error of an AUC on n_pos positives, n_neg negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return math.sqrt(var)


def one(search_seed: int, new: bool, work: Path, test_targets: np.ndarray) -> dict:
    cfg = parse_search_config(
        space(f"honesty-{'new' if new else 'old'}-{search_seed}", search_seed, new, work)
    )
    outcome = run_search(cfg, echo=lambda *_: None)
    tracker = Tracker(*resolve_tracking(cfg.tracking))
    splits = DecodedSplits(outcome.data)
    candidates = score_candidates(
        tracker, tracker.finished_trials([cfg.name]), splits, VIEWS, echo=lambda *_: None
    )
    val = splits.split("val")
    # old: the final stage split valset afterwards (50/50, seed 0); new: the split the search kept
    # aside
    holdout = split_valset(val, 0.5, 0)
    recipe = (
        EnsembleRecipe(top_k=5, tta=VIEWS)
        if new
        else EnsembleRecipe(top_k=5, tta=VIEWS, combine="mean")
    )
    result = build_ensemble(candidates, val.targets, recipe, *holdout.indices(val.names))
    best = (
        result.table[result.table["kind"] == "member"]
        .sort_values("select_objective", ascending=False)
        .iloc[0]
    )
    member = next(c for c in candidates if c.name == best["member"])
    member_test = member.test[[member.views.index(v) for v in result.views[member.name]]].mean(0)
    # What valset's report part and testset differ by for a trial nothing chose: the data's own gap,
    # the same for every run on these fixed images. Estimate minus test beyond it is selection.
    _, report = holdout.indices(val.names)
    gaps = [
        roc_auc(val.targets[report], c.val[0][report]) - roc_auc(test_targets, c.test[0])
        for c in candidates
    ]
    return {
        "unselected_gap": float(np.mean(gaps)),
        "estimate": result.metrics["holdout_auc"],
        "test": roc_auc(test_targets, result.test_pred),
        "member_estimate": result.metrics["best_member_holdout_auc"],
        "member_test": roc_auc(test_targets, member_test),
        "chosen": result.chosen,
        "n_report": len(holdout.report_names),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = p.parse_args()
    ensure_dataset(parse_search_config(space("x", 0, True, Path("/tmp"))).data)
    labels = pd.read_csv(DATA / "testset_label.txt").set_index("img_name")["target"]
    test_names = sorted(p.name for p in (DATA / "testset").iterdir())
    test_targets = labels.loc[test_names].to_numpy()
    rows = []
    print(
        f"{'seed':>4} {'search':>6} {'shipped':>12} {'estimate':>8} {'test':>7} {'est-test':>8} "
        f"{'member est':>10} {'member test':>11} {'est-test':>8} {'unselected gap':>14}"
    )
    for seed in args.seeds:
        for new in (False, True):
            work = Path(tempfile.mkdtemp(prefix="ffdi-honesty-"))
            try:
                r = one(seed, new, work, test_targets)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            r.update(seed=seed, search="new" if new else "old")
            rows.append(r)
            print(
                f"{seed:>4} {r['search']:>6} {r['chosen']:>12} {r['estimate']:8.4f} "
                f"{r['test']:7.4f} {r['estimate'] - r['test']:+8.4f} {r['member_estimate']:10.4f} "
                f"{r['member_test']:11.4f} {r['member_estimate'] - r['member_test']:+8.4f} "
                f"{r['unselected_gap']:+14.4f}",
                flush=True,
            )
    df = pd.DataFrame(rows)
    old, new = df[df.search == "old"], df[df.search == "new"]
    auc = float(df["test"].mean())
    n_fake_test = int(test_targets.sum())
    se_report = auc_standard_error(auc, rows[0]["n_report"] // 2, rows[0]["n_report"] // 2)
    se_test = auc_standard_error(auc, n_fake_test, len(test_targets) - n_fake_test)
    print(
        f"noise: standard error of an AUC near {auc:.3f} on the {rows[0]['n_report']}-image report "
        f"part {se_report:.4f}, on the {len(test_targets)}-image testset {se_test:.4f}; of a "
        f"difference of the two {math.hypot(se_report, se_test):.4f} (one seed), "
        f"{math.hypot(se_report, se_test) / math.sqrt(len(args.seeds)):.4f} (mean of "
        f"{len(args.seeds)} seeds, if independent)"
    )
    print(
        json.dumps(
            {
                "seeds": args.seeds,
                "mean_estimate_minus_test_old": round(
                    float((old["estimate"] - old["test"]).mean()), 4
                ),
                "mean_estimate_minus_test_new": round(
                    float((new["estimate"] - new["test"]).mean()), 4
                ),
                "mean_member_estimate_minus_test_old": round(
                    float((old["member_estimate"] - old["member_test"]).mean()), 4
                ),
                "mean_member_estimate_minus_test_new": round(
                    float((new["member_estimate"] - new["member_test"]).mean()), 4
                ),
                "auto_vs_best_member_test": round(
                    float((new["test"] - new["member_test"]).mean()), 4
                ),
                "old_mean_vs_best_member_test": round(
                    float((old["test"] - old["member_test"]).mean()), 4
                ),
                "mean_unselected_gap": round(float(df["unselected_gap"].mean()), 4),
                "selection_optimism_old": round(
                    float((old["estimate"] - old["test"] - old["unselected_gap"]).mean()), 4
                ),
                "selection_optimism_new": round(
                    float((new["estimate"] - new["test"] - new["unselected_gap"]).mean()), 4
                ),
                "auc_standard_error_report": round(se_report, 4),
                "auc_standard_error_test": round(se_test, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
