"""Is the search worth its compute? The demo search + ensemble against its own default recipe alone,
trained for the same wall time, on generated data the project was not tuned on.

Per task and seed, in a scratch folder each, through the real command line:

- **search**: ``ffdi-tune run search_spaces/demo.yaml --time-budget B`` (the plan, the default
  recipe as first trial, ASHA rungs, the final stage), its whole wall time ``W`` measured;
- **one recipe**: the same space's default recipe (the search's first trial) alone, every CPU,
  trained (``train_trial``, the trainer the search runs, without Ray) until ``W`` less the time to
  score has passed; ``best.pt`` is its best epoch on the search's selection part, scored with the
  final stage's views chosen there, as a one-member ensemble. It gets slightly more training time
  than the search had (no Ray start, no probes). Both walls are printed.

Both score testset against ``testset_label.txt``. Tasks: ``shift`` (``--unseen-forgery
double_jpeg``: every test fake carries a forgery kind trainset and valset never show) and
``hard`` (no shift, difficulty 0.7). Prints a row per run, then per task the mean test AUC of both
arms, the share of the one recipe's mis-ordered (real, fake) pairs the search removed
(``1 - (1 - auc_search) / (1 - auc_recipe)``) and the seed-to-seed spread; the last line is JSON.
About ``2 x B`` seconds per task and seed on 2 cores:

    python bench/equal_compute.py [--seeds 0 1 2] [--budget 150] [--tasks shift hard]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from ffdi_tune.config import load_search_config
from ffdi_tune.data.holdout import split_valset
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.build import MemberPredictions, build_ensemble
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.scoring.metrics import misordered_pairs_removed, roc_auc
from ffdi_tune.scoring.predict import member_from_checkpoint, predict_views
from ffdi_tune.search.default_recipe import default_point
from ffdi_tune.search.space import trial_settings
from ffdi_tune.training.trial import BEST_FILE, train_trial

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "demo.yaml"
TASKS = {
    "shift": ["--difficulty", "0.5", "--unseen-forgery", "double_jpeg"],
    "hard": ["--difficulty", "0.7"],
}
SIZES = ["--n-train", "1000", "--n-val", "400", "--n-test", "400", "--size", "64"]


def ffdi(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ffdi_tune", *args], cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"ffdi-tune {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done, time.perf_counter() - start


def test_auc(submission: Path, data: Path) -> float:
    labels = pd.read_csv(data / "testset_label.txt")
    scores = pd.read_csv(submission).merge(labels, on="img_name")
    assert len(scores) == len(labels), "the submission must cover every test image"
    return roc_auc(scores["target"].to_numpy(), scores["y_pred"].to_numpy())


SCORING_S = 10.0  # kept from the one recipe's wall for scoring valset and testset


def one_recipe(data: Path, search_folder: Path, wall: float) -> dict:
    """The space's default recipe alone, every CPU, trained until the search's wall ``wall`` (less
    the time to score) has passed, without Ray (so it trains a little longer than the search
    could); its ``best.pt`` (best epoch on the search's selection part) is then scored with the
    final stage's TTA views chosen on the selection part, as a one-member ensemble."""
    started = time.perf_counter()
    cfg = load_search_config(SPACE)
    settings = trial_settings(cfg.train, default_point(cfg)).model_copy(
        update={"epochs": 1000, "seed": 0}
    )
    data_cfg = DataConfig(root=str(data))
    val, test = read_split(data_cfg, "val"), read_split(data_cfg, "test")
    kept_split = json.loads((search_folder / "holdout.json").read_text())
    holdout = split_valset(val, kept_split["fraction"], kept_split["seed"])
    kept: dict = {}

    def report(metrics, folder):
        kept.update(
            best=torch.load(Path(folder) / BEST_FILE, weights_only=True), epochs=metrics["epoch"]
        )

    deadline = time.time() + wall - SCORING_S - (time.perf_counter() - started)
    train_trial(
        settings, data_cfg, report, val_names=holdout.select_names, deadline=deadline,
        robust_val=cfg.robust_val, device="cpu",
    )  # fmt: skip
    member = member_from_checkpoint(kept["best"], "recipe", torch.device("cpu"))
    views = ["identity", "hflip"]
    candidate = MemberPredictions(
        "recipe", "recipe", views,
        predict_views(member, load_images(val, member.img_size), views),
        predict_views(member, load_images(test, member.img_size), views),
    )  # fmt: skip
    result = build_ensemble(
        [candidate], val.targets, EnsembleRecipe(top_k=1, tta=views), *holdout.indices(val.names)
    )
    labels = pd.read_csv(data / "testset_label.txt").set_index("img_name")
    return {
        "recipe_auc": roc_auc(labels.loc[list(test.names), "target"].to_numpy(), result.test_pred),
        "recipe_wall_s": time.perf_counter() - started,
        "recipe_epochs": kept["epochs"],
    }


def run_pair(task: str, seed: int, budget: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"ffdi-equal-{task}-{seed}-") as tmp:
        work = Path(tmp)
        data = work / "data"
        ffdi(work, "demo-data", str(data), "--seed", str(seed), *SIZES, *TASKS[task])
        _, wall = ffdi(
            work, "run", str(SPACE), "--data", str(data), "--name", "search",
            "--time-budget", f"{budget:g}s",
        )  # fmt: skip
        search_auc = test_auc(work / "runs" / "search" / "submission.csv", data)
        trials = pd.read_csv(work / "runs" / "search" / "trials.csv")
        recipe = one_recipe(data, work / "runs" / "search", wall)
    return {
        "task": task,
        "seed": seed,
        "search_auc": search_auc,
        "search_wall_s": wall,
        "search_trials": len(trials),
        "deepest_epochs": int(trials["epochs_run"].max()),
        **recipe,
    }


def summarise(rows: list[dict]) -> dict:
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        shares = [misordered_pairs_removed(r["search_auc"], r["recipe_auc"]) for r in mine]
        out[task] = {
            "seeds": len(mine),
            "search_auc_mean": statistics.fmean(r["search_auc"] for r in mine),
            "recipe_auc_mean": statistics.fmean(r["recipe_auc"] for r in mine),
            "search_auc_sd": statistics.pstdev(r["search_auc"] for r in mine),
            "recipe_auc_sd": statistics.pstdev(r["recipe_auc"] for r in mine),
            "misordered_pairs_removed_mean": statistics.fmean(shares),
            "misordered_pairs_removed_sd": statistics.pstdev(shares),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=float, default=150.0, help="the search's --time-budget, s")
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    args = ap.parse_args()
    rows = []
    print("task   seed  search AUC (wall, trials, deepest)   one recipe AUC (wall, epochs)")
    for task in args.tasks:
        for seed in args.seeds:
            r = run_pair(task, seed, args.budget)
            rows.append(r)
            print(
                f"{task:6} {seed:4}  {r['search_auc']:.4f} ({r['search_wall_s']:.0f}s, "
                f"{r['search_trials']}, {r['deepest_epochs']} ep)"
                f"          {r['recipe_auc']:.4f} ({r['recipe_wall_s']:.0f}s, "
                f"{r['recipe_epochs']} ep)",
                flush=True,
            )
    summary = summarise(rows)
    for task, s in summary.items():
        print(
            f"{task}: search {s['search_auc_mean']:.4f} ± {s['search_auc_sd']:.4f}, one recipe "
            f"{s['recipe_auc_mean']:.4f} ± {s['recipe_auc_sd']:.4f}; mis-ordered pairs removed "
            f"{s['misordered_pairs_removed_mean']:+.1%} ± {s['misordered_pairs_removed_sd']:.1%}"
        )
    print(json.dumps({"budget_s": args.budget, "rows": rows, "summary": summary}))


if __name__ == "__main__":
    main()
