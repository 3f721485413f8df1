"""Members vs the three combination methods, with and without TTA, on the report half.

Scores every finished trial of a search once (val + test, all views), then builds a mean, a rank
and a greedy ensemble from the same predictions. Runs the demo search first when the store has no
such experiment. Prints a table, then one JSON object on the last line.

    python bench/ensemble_methods.py [--experiment demo] [--top-k 5] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pandas as pd

from ffdi_tune.final_stage import candidate_runs, score_candidates
from ffdi_tune.ensemble import build_ensemble
from ffdi_tune.predict import DecodedSplits
from ffdi_tune.config import DataConfig
from ffdi_tune.recipe import EnsembleRecipe
from ffdi_tune.tracking import Tracker, resolve_tracking


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--data", help="data root (default: recorded on the search run)")
    ap.add_argument("--tta", default="identity,hflip,vflip")
    args = ap.parse_args()

    tracker = Tracker(*resolve_tracking())
    if tracker.experiment_id(args.experiment, create=False) is None and args.experiment == "demo":
        subprocess.run([sys.executable, "-m", "ffdi_tune", "run", "search_spaces/demo.yaml", "--no-ensemble"],
                       check=True)
    views = args.tta.split(",")
    recipes = {c: EnsembleRecipe(top_k=args.top_k, combine=c, tta=views) for c in ("mean", "rank", "greedy")}
    runs = candidate_runs(tracker, recipes["mean"], [args.experiment])
    root = args.data or tracker.search_tags(args.experiment).get("ffdi.data_root") or "runs/demo-data"
    splits = DecodedSplits(DataConfig(root=root))
    candidates = score_candidates(tracker, runs, splits, views, echo=lambda *_: None)
    targets = splits.split("val").targets

    rows, figures = [], {}
    for combine, recipe in recipes.items():
        result = build_ensemble(candidates, targets, recipe)
        table = result.table.set_index("member")
        if combine == "mean":
            for name, row in table.drop(index="ensemble").iterrows():
                rows.append({"what": f"member {row['label']}", "holdout_no_tta": row["holdout_auc_no_tta"],
                             "holdout_tta": row["holdout_auc_tta"], "select_tta": row["select_auc_tta"]})
        ens = table.loc["ensemble"]
        rows.append({"what": f"ensemble {combine} ({len(result.members)} members)",
                     "holdout_no_tta": ens["holdout_auc_no_tta"], "holdout_tta": ens["holdout_auc_tta"],
                     "select_tta": ens["select_auc_tta"]})
        figures[f"{combine}_holdout_auc"] = round(float(result.metrics["holdout_auc"]), 4)
        figures[f"{combine}_holdout_auc_no_tta"] = round(float(result.metrics["holdout_auc_no_tta"]), 4)
        figures["best_member_holdout_auc"] = round(float(result.metrics["best_member_holdout_auc"]), 4)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    figures.update(experiment=args.experiment, candidates=len(candidates), views=views,
                   report_images=int(round(len(targets) * 0.5)))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
