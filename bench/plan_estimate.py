"""How well a budget's plan knows what an epoch costs: the plan's estimate against the epochs its
default recipe then ran.

Runs `ffdi-tune run demo --time-budget 75s --no-ensemble` on a small generated dataset (48 train,
24 val, 8 test images at 32 px: the size at which an epoch's fixed costs weigh most) in a scratch
folder with its own decode and probe caches, then compares:

- `estimate_s`: the plan's seconds for one epoch of one trial (`plan.json`, `trial_epoch_s`): its
  training steps, its scoring (twice with an EMA) and its checkpoint, as the probe timed them;
- `estimate_without_checkpoint_s`: the same without the checkpoint's share (what the plan used to
  count);
- `measured_s`: the median seconds between the default recipe's reports after its first epoch
  (Tune's `time_this_iter_s`: training, scoring, writing best.pt / last.pt and Tune's copy).

    python bench/plan_estimate.py [--budget 75s]
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

from ffdi_tune.data.demo import write_demo_dataset


def default_recipe_epochs(runs: Path) -> list[float]:
    """The default recipe's seconds per epoch after its first, from Tune's results."""
    for result in runs.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows and rows[0].get("config", {}).get("default_recipe"):
            return [r["time_this_iter_s"] for r in rows[1:]]
    raise SystemExit("the default recipe's results were not found")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget", default="75s")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ffdi-bench-") as tmp:
        data = write_demo_dataset(
            Path(tmp) / "data", n_train=48, n_val=24, n_test=8, size=32, seed=3, difficulty=0.2
        )
        env = dict(os.environ, FFDI_TUNE_CACHE=str(Path(tmp) / "cache"))
        subprocess.run(
            [sys.executable, "-m", "ffdi_tune", "run", "demo", "--data", str(data),
             "--time-budget", args.budget, "--no-ensemble"],
            cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        plan = json.loads((Path(tmp) / "runs" / "demo" / "plan.json").read_text())
        probes = json.loads((Path(tmp) / "cache" / "probes.json").read_text())
        epochs = default_recipe_epochs(Path(tmp) / "runs" / "demo")
    (probe,) = probes.values()  # the demo searches one backbone
    slowdown = plan["max_concurrent"]  # CPU trials share the cores
    estimate = plan["trial_epoch_s"]
    without = estimate - probe["checkpoint_s"] * slowdown
    measured = statistics.median(epochs)
    out = {
        "epochs_measured": len(epochs),
        "estimate_s": round(estimate, 4),
        "estimate_without_checkpoint_s": round(without, 4),
        "measured_s": round(measured, 4),
        "estimate_over_measured": round(estimate / measured, 3),
        "without_checkpoint_over_measured": round(without / measured, 3),
    }
    print(
        f"an epoch: measured {measured:.3f} s (median of {len(epochs)}); planned {estimate:.3f} s "
        f"({estimate / measured:.2f}x), without the checkpoint {without:.3f} s "
        f"({without / measured:.2f}x)"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
