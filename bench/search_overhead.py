"""Where a demo search's trial-worker time goes, and how fast a trial reaches its first batch.

Runs `ffdi-tune run search_spaces/demo.yaml --no-ensemble` in a scratch folder (its own runs/,
dataset and decode cache), then reads the trials from MLflow:

- step_share: time in train + val steps (the epochs' `epoch_time_s`) over the trial runs' wall
  time (start-up, data, checkpointing and reporting are the rest);
- start_to_first_batch_s: median time from the trial function's entry to its first finished
  training batch (`time_to_first_batch_s`), decode-once cache included.

    python bench/search_overhead.py [--num-samples 8] [--space search_spaces/demo.yaml]
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--space", default=str(REPO / "search_spaces" / "demo.yaml"))
    ap.add_argument("--num-samples", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ffdi-bench-") as tmp:
        env = dict(os.environ, FFDI_TUNE_CACHE=str(Path(tmp) / "cache"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ffdi_tune",
                "run",
                args.space,
                "--no-ensemble",
                "--name",
                "overhead",
                "--num-samples",
                str(args.num_samples),
            ],
            cwd=tmp,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        client = MlflowClient(f"sqlite:///{tmp}/runs/mlflow.db")
        exp = client.get_experiment_by_name("overhead")
        trials = client.search_runs([exp.experiment_id], "tags.`ffdi.role` = 'trial'")
        step_s, wall_s, first = 0.0, 0.0, []
        for run in trials:
            step_s += sum(
                m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")
            )
            wall_s += (run.info.end_time - run.info.start_time) / 1000
            first.append(run.data.metrics["time_to_first_batch_s"])
    out = {
        "step_share": round(step_s / wall_s, 3),
        "start_to_first_batch_s": round(statistics.median(first), 2),
        "max_start_to_first_batch_s": round(max(first), 2),
        "trials": len(trials),
        "trial_wall_s": round(wall_s, 1),
        "step_s": round(step_s, 1),
    }
    print(
        f"{len(trials)} trials: {out['step_share']:.0%} of trial time in train/val steps; trial "
        f"start to first batch {out['start_to_first_batch_s']} s (median), "
        f"{out['max_start_to_first_batch_s']} s (max)"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
