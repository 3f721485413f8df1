"""Does choosing on the perturbed valset pick models that generalise to an unseen forgery?

Runs one small search (``search_spaces/demo_shift.yaml``: testset fakes carry a forgery kind that
trainset and valset lack; FIFO here, so every trial trains its full epochs and all selection rules
choose from the same pool), scores every trial's ``best.pt`` on valset, its perturbed copy and
testset, and prints the test AUC of:

- the best trial by ``val_auc``, by ``val_robust_auc`` and by ``val_worst_auc``;
- ensembles (mean of the top 3, and greedy from all trials) ranked / fit by each of the three,
  on the selection part of valset (the search's split) as the final stage does.

Test labels come from the dataset's ``testset_label.txt`` (never read by training). The search
state and its MLflow store go to a temporary folder; the dataset to ``runs/demo-shift-data``.
Ends with one JSON object on the last line. A few minutes on 2 cores:

    python bench/robust_selection.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ffdi_tune.config import load_search_config
from ffdi_tune.data.holdout import split_valset
from ffdi_tune.data.perturb import Perturber
from ffdi_tune.ensemble.build import build_ensemble
from ffdi_tune.ensemble.final_stage import score_candidates
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.scoring.predict import DecodedSplits
from ffdi_tune.search.runner import run_search
from ffdi_tune.tracking import Tracker, resolve_tracking

REPO = Path(__file__).resolve().parents[1]
METRICS = ("val_auc", "val_robust_auc", "val_worst_auc")
VIEWS = ["identity", "hflip"]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ffdi-robust-bench-"))
    try:
        cfg = load_search_config(
            REPO / "search_spaces" / "demo_shift.yaml",
            {
                "name": "robust_selection",
                "search.storage": str(work / "ray"),
                "tracking.uri": f"sqlite:///{work}/mlflow.db",
                "scheduler.type": "fifo",
            },
        )
        # the file's own root, made absolute: a data.root override would drop its demo generator
        cfg = cfg.model_copy(
            update={"data": cfg.data.model_copy(update={"root": str(REPO / cfg.data.root)})}
        )
        outcome = run_search(cfg, echo=print)
        tracker = Tracker(*resolve_tracking(cfg.tracking))
        runs = tracker.finished_trials([cfg.name])
        splits = DecodedSplits(outcome.data)
        candidates = score_candidates(
            tracker, runs, splits, VIEWS, echo=lambda *_: None, perturb=Perturber(cfg.robust_val)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    y_val = splits.split("val").targets
    # the split the search kept
    holdout = split_valset(
        splits.split("val"), cfg.search.holdout.fraction, cfg.search.holdout.seed
    )
    labels = pd.read_csv(Path(outcome.data.root) / "testset_label.txt").set_index("img_name")[
        "target"
    ]
    y_test = labels.loc[list(splits.split("test").names)].to_numpy()

    rows = []
    for c in candidates:
        clean, robust = roc_auc_score(y_val, c.val[0]), roc_auc_score(y_val, c.val_robust[0])
        rows.append(
            {
                "trial": c.label,
                "val_auc": clean,
                "val_robust_auc": robust,
                "val_worst_auc": min(clean, robust),
                "test_auc": roc_auc_score(y_test, c.test[0]),
            }
        )
    members = pd.DataFrame(rows).sort_values("val_auc", ascending=False)
    print()
    print("trials (identity view, whole valset; testset fakes carry the unseen forgery kind):")
    print(members.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    figures: dict[str, float | int | str] = {}
    for metric in METRICS:
        best = members.loc[members[metric].idxmax()]
        figures[f"best_by_{metric}_test_auc"] = round(float(best["test_auc"]), 4)
    for metric in METRICS:
        for name, recipe in (
            ("mean3", EnsembleRecipe(top_k=3, metric=metric, combine="mean", tta=VIEWS)),
            (
                "greedy",
                EnsembleRecipe(top_k=len(candidates), metric=metric, combine="greedy", tta=VIEWS),
            ),
        ):
            result = build_ensemble(
                candidates, y_val, recipe, *holdout.indices(splits.split("val").names)
            )
            figures[f"{name}_by_{metric}_test_auc"] = round(
                float(roc_auc_score(y_test, result.test_pred)), 4
            )
            figures[f"{name}_by_{metric}_members"] = len(result.members)
    figures.update(
        trials=len(candidates),
        oracle_best_test_auc=round(float(members["test_auc"].max()), 4),
        mean_all_test_auc=round(
            float(roc_auc_score(y_test, np.mean([c.test[0] for c in candidates], 0))), 4
        ),
        test_images=int(len(y_test)),
        unseen_forgery=str(cfg.data.demo.unseen_forgery),
        search_s=round(outcome.wall_s),
    )

    print()
    print("test AUC by selection rule:")
    for key, value in figures.items():
        if key.endswith("_test_auc"):
            print(f"  {key.removesuffix('_test_auc'):<28} {value:.4f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
