"""Does multivariate TPE find better trials than independent TPE, for the same trials?

Per seed, in a scratch folder, through the real command line: a generated dataset, then the same
search twice, ``search.tpe_multivariate: true`` (Optuna's multivariate, grouped TPE, with
``constant_liar`` since two trials run at once) and ``false`` (each parameter on its own, as
Optuna's default). The space is the demo's fine-tuning knobs (lr, warm-up, schedule, StepLR,
augmentation, label smoothing, mixup) fine-tuning pretrained Lite0 for 2 short epochs at 48 px, so
that TPE proposes most of the trials: ``--trials`` trials, the first ``--startup`` of them random,
FIFO (no early stopping: each proposal is judged on its full length), no time budget.

Prints per run the best trial's selection-part AUC (what TPE maximises), the mean of the last half
of the trials (where TPE proposes), the report-part AUC of the shipped ensemble (``top3``), and its
test AUC; then per arm the mean and seed-to-seed spread. Last line JSON. About ``2 x seeds x
trials x 6 s`` on 2 cores:

    python bench/tpe.py [--seeds 0 1 2] [--trials 16] [--startup 5]
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
from mlflow.tracking import MlflowClient

from ffdi_tune.scoring.metrics import roc_auc

SPACE = """
name: tpe
data: {{root: data}}
train: {{backbone: tf_efficientnet_lite0, pretrained: true, img_size: 48, batch_size: 32, epochs: 2,
        optimizer: adamw}}
space:
  lr: {{loguniform: [1.0e-4, 1.0e-2]}}
  weight_decay: {{loguniform: [1.0e-4, 0.1]}}
  warmup_epochs: {{choice: [0, 0.5]}}
  schedule: {{choice: [step, cosine]}}
  step_size: {{int: [1, 3]}}
  gamma: {{uniform: [0.3, 0.9]}}
  augment: {{choice: [flips, color, jpeg]}}
  label_smoothing: {{choice: [0.0, 0.1]}}
  mix: {{choice: [none, mixup]}}
search:
  num_samples: {trials}
  max_concurrent: 2
  seed: {seed}
  tpe_startup_trials: {startup}
  tpe_multivariate: {multivariate}
  default_trial: false
scheduler: {{type: fifo}}
robust_val: {{enabled: false}}
tracking: {{system_metrics: false}}
resources: {{cpu: 1, gpu: 0}}
ensemble: top3.yaml
"""
SIZES = ["--n-train", "400", "--n-val", "300", "--n-test", "300", "--size", "64"]


def ffdi(cwd: Path, *args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ffdi_tune", *args], cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"ffdi-tune {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def one_search(work: Path, data: Path, seed: int, multivariate: bool, args) -> dict:
    folder = work / ("multivariate" if multivariate else "independent")
    folder.mkdir()
    (folder / "data").symlink_to(data)
    (folder / "top3.yaml").write_text("top_k: 3\ntta: [identity, hflip]\n")
    space = SPACE.format(
        trials=args.trials, seed=seed, startup=args.startup, multivariate=str(multivariate).lower()
    )
    (folder / "space.yaml").write_text(space)
    wall = ffdi(folder, "run", "space.yaml")
    client = MlflowClient(f"sqlite:///{folder}/runs/mlflow.db")
    exp = client.get_experiment_by_name("tpe")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    trials = [r for r in runs if r.data.tags.get("ffdi.role") == "trial"]
    best = [
        max(m.value for m in client.get_metric_history(r.info.run_id, "val_auc")) for r in trials
    ]
    ensemble = next(r for r in runs if r.data.tags.get("ffdi.role") == "ensemble")
    labels = pd.read_csv(data / "testset_label.txt")
    scores = pd.read_csv(folder / "runs" / "tpe" / "submission.csv").merge(labels, on="img_name")
    return {
        "seed": seed,
        "multivariate": multivariate,
        "best_select_auc": max(best),
        "late_mean_select_auc": statistics.fmean(best[len(best) // 2 :]),
        "shipped_report_auc": ensemble.data.metrics["holdout_auc"],
        "shipped_test_auc": roc_auc(scores["target"].to_numpy(), scores["y_pred"].to_numpy()),
        "wall_s": wall,
    }


def summarise(rows: list[dict]) -> dict:
    out = {}
    for arm in (True, False):
        mine = [r for r in rows if r["multivariate"] is arm]
        keys = ("best_select_auc", "late_mean_select_auc", "shipped_report_auc", "shipped_test_auc")
        out["multivariate" if arm else "independent"] = {
            k: (round(statistics.fmean(r[k] for r in mine), 4),
                round(statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0, 4))
            for k in keys
        }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--startup", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"ffdi-tpe-{seed}-") as tmp:
            work = Path(tmp)
            data = work / "data"
            ffdi(work, "demo-data", str(data), "--seed", str(seed), *SIZES, "--difficulty", "0.5")
            for multivariate in (True, False):
                row = one_search(work, data, seed, multivariate, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = summarise(rows)
    print(f"{'arm':13} {'best select':>16} {'late mean':>16} {'shipped report':>16} "
          f"{'shipped test':>16}")  # fmt: skip
    for arm, s in summary.items():
        print(f"{arm:13} " + " ".join(f"{m:.4f} ± {sd:.4f}".rjust(16) for m, sd in s.values()))
    print(json.dumps({"trials": args.trials, "startup": args.startup, "rows": rows,
                      "summary": summary}))  # fmt: skip


if __name__ == "__main__":
    main()
