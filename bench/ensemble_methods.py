"""Members vs every combination the final stage builds, with and without TTA, on both parts of
valset.

Scores every finished trial of a search once (val + test, all views), then builds the ensemble as
``combine: auto`` does: the best member, mean of probabilities, mean of log-odds, rank average and
greedy on either average, all chosen on the search's selection part and scored on its report part.
Runs the demo search first when the store has no such experiment. Prints a table, then one JSON
object on the last line.

    python bench/ensemble_methods.py [--experiment demo] [--top-k 5] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from ffdi_tune.data.holdout import split_valset
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.build import build_ensemble
from ffdi_tune.ensemble.final_stage import candidate_runs, score_candidates
from ffdi_tune.ensemble.methods import COMBINATIONS
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.ensemble.search_record import recorded_holdout as search_holdout
from ffdi_tune.ensemble.table import format_ensemble_table
from ffdi_tune.scoring.predict import DecodedSplits
from ffdi_tune.tracking import Tracker, resolve_tracking


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--data", help="data root (default: recorded on the search run)")
    ap.add_argument("--tta", default="identity,hflip,vflip")
    args = ap.parse_args()

    tracker = Tracker(*resolve_tracking())
    if tracker.experiment_id(args.experiment, create=False) is None and args.experiment == "demo":
        subprocess.run(
            [sys.executable, "-m", "ffdi_tune", "run", "search_spaces/demo.yaml", "--no-ensemble"],
            check=True,
        )
    recipe = EnsembleRecipe(top_k=args.top_k, tta=args.tta.split(","))
    runs = candidate_runs(tracker, recipe, [args.experiment])
    tags = tracker.search_tags(args.experiment)
    splits = DecodedSplits(
        DataConfig(root=args.data or tags.get("ffdi.data_root") or "runs/demo-data")
    )
    candidates = score_candidates(tracker, runs, splits, recipe.tta, echo=lambda *_: None)
    val = splits.split("val")
    fraction, seed, _ = search_holdout({args.experiment: tags})
    holdout = split_valset(val, fraction, seed)
    result = build_ensemble(candidates, val.targets, recipe, *holdout.indices(val.names))
    print(format_ensemble_table(result.table))
    table = result.table.set_index("member")
    figures = {
        f"{c}_holdout_auc": round(float(table.loc[c, "holdout_auc_tta"]), 4) for c in COMBINATIONS
    }
    figures |= {
        f"{c}_select_auc": round(float(table.loc[c, "select_auc_tta"]), 4) for c in COMBINATIONS
    }
    figures.update(
        chosen=result.chosen,
        experiment=args.experiment,
        candidates=len(candidates),
        views=recipe.tta,
        select_images=len(holdout.select_names),
        report_images=len(holdout.report_names),
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
