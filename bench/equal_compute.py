"""Is the search worth its compute? The demo search + ensemble against its own default recipe alone,
trained for the same wall time, on generated data the project was not tuned on.

Per task and seed, in a scratch folder each, through the real command line:

- **search**: ``ffdi-tune run search_spaces/demo.yaml --time-budget B`` (the plan, the default
  recipe as first trial, ASHA rungs, the final stage), its whole wall time ``W`` measured;
- **one recipe**: the same space's default recipe (the search's first trial) as the only trial,
  every CPU, for as many epochs as fit in the search's planned training time (``W`` less its
  set-up and final stage, in its ``plan.json``) at the pace the search's own default-recipe trial
  kept (``best.pt`` is its best epoch on the selection part), then the same final stage with that
  one member. Both walls are printed.

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
import yaml

from ffdi_tune.config import load_search_config
from ffdi_tune.scoring.metrics import misordered_pairs_removed, roc_auc
from ffdi_tune.search.default_recipe import default_point
from ffdi_tune.search.space import trial_settings

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


def recipe_epochs(search_folder: Path) -> int:
    """Epochs of the default recipe alone, on every CPU, that fit the search's training time (its
    wall less its set-up and final stage, as planned): at the pace the search's own default-recipe
    trial kept, Tune's wall per epoch (training, scoring, checkpoint), divided by the trials that
    shared the CPUs with it (the probe's estimate runs short of that pace)."""
    plan = json.loads((search_folder / "plan.json").read_text())
    result = next(search_folder.glob("_trainable_*default_recipe=True*/result.json"))
    epochs = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    epoch_s = statistics.mean(e["time_this_iter_s"] for e in epochs) / plan["max_concurrent"]
    return max(1, int(plan["training_s"] // epoch_s))


def one_recipe_space(work: Path, data: Path, epochs: int) -> Path:
    """The demo space reduced to its default recipe: one trial with every CPU for ``epochs``."""
    cfg = load_search_config(SPACE)
    recipe = trial_settings(cfg.train, default_point(cfg)).model_dump(mode="json")
    recipe.update(epochs=epochs, seed=0)
    space = {
        "name": "recipe",
        "data": {"root": str(data)},
        "train": recipe,
        "search": {"num_samples": 1, "max_concurrent": 1},
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 2, "gpu": 0},
        "ensemble": str(work / "one.yaml"),
    }
    (work / "one.yaml").write_text("top_k: 1\ncombine: best\n")
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


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
        epochs = recipe_epochs(work / "runs" / "search")
        _, recipe_wall = ffdi(work, "run", str(one_recipe_space(work, data, epochs)))
        recipe_auc = test_auc(work / "runs" / "recipe" / "submission.csv", data)
        recipe_trials = pd.read_csv(work / "runs" / "recipe" / "trials.csv")
    return {
        "task": task,
        "seed": seed,
        "search_auc": search_auc,
        "search_wall_s": wall,
        "search_trials": len(trials),
        "deepest_epochs": int(trials["epochs_run"].max()),
        "recipe_auc": recipe_auc,
        "recipe_wall_s": recipe_wall,
        "recipe_epochs": int(recipe_trials["epochs_run"].max()),
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
