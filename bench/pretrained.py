"""What do ImageNet weights buy on the demo data? Pretrained lite0 vs lite0 from random weights vs
the best from-scratch backbone of the earlier demo (test_resnet), on the same budget.

Every contender trains the same epochs at the same img_size on the demo dataset of
``search_spaces/demo.yaml`` (generated into ``runs/demo-data`` when missing), once per learning
rate in ``LRS`` (so no contender loses to a badly chosen rate); the best rate by final val AUC
counts. Prints val AUC per epoch, wall time, and the AUC on the demo's labelled testset of the
best epoch's model; ends with one JSON object on the last line. About 6 minutes on 2 cores:

    python bench/pretrained.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from ffdi_tune.config import load_search_config
from ffdi_tune.data.layout import ensure_dataset
from ffdi_tune.scoring.predict import DecodedSplits, load_member, predict_views
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import BEST_FILE, train_trial

REPO = Path(__file__).resolve().parents[1]
LRS = (1e-3, 3e-3)
CONTENDERS = {  # name -> (backbone, pretrained)
    "lite0_pretrained": ("tf_efficientnet_lite0", True),
    "lite0_random": ("tf_efficientnet_lite0", False),
    "test_resnet_scratch": ("test_resnet", False),
}


def train_one(backbone: str, pretrained: bool, lr: float, cfg, work: Path) -> dict:
    s = TrainSettings(
        **{**cfg.train.model_dump(), "backbone": backbone, "pretrained": pretrained, "lr": lr}
    )
    curve, saved = [], work / f"{backbone}-{pretrained}-{lr}.pt"

    def report(metrics, folder):
        curve.append(metrics["val_auc"])
        saved.write_bytes((folder / BEST_FILE).read_bytes())  # the best epoch so far

    t0 = time.perf_counter()
    train_trial(s, cfg.data, report, robust_val=None)
    wall = time.perf_counter() - t0
    splits = DecodedSplits(cfg.data)
    member = load_member(saved, backbone, torch.device("cpu"))
    test_pred = predict_views(member, splits.images("test", member.img_size), ["identity"])[0]
    labels = pd.read_csv(Path(cfg.data.root) / "testset_label.txt").set_index("img_name")["target"]
    test_auc = roc_auc_score(labels.loc[list(splits.split("test").names)].to_numpy(), test_pred)
    return {"lr": lr, "val_auc_per_epoch": curve, "wall_s": wall, "test_auc": float(test_auc)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    cfg = load_search_config(REPO / "search_spaces" / "demo.yaml", {"train.epochs": args.epochs})
    # the file's own root, made absolute: a data.root override would drop its demo generator
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"root": str(REPO / cfg.data.root)})}
    )
    ensure_dataset(cfg.data)
    work = REPO / "runs" / "bench-pretrained"
    work.mkdir(parents=True, exist_ok=True)
    best = {}
    print(
        f"{cfg.train.epochs} epochs at {cfg.train.img_size} px, batch {cfg.train.batch_size}, "
        f"{cfg.data.demo.n_train} training images, 2 threads"
    )
    print(f"{'contender':22} {'lr':>7} {'val AUC per epoch':28} {'wall s':>7} {'test AUC':>8}")
    for name, (backbone, pretrained) in CONTENDERS.items():
        for lr in LRS:
            r = train_one(backbone, pretrained, lr, cfg, work)
            print(
                f"{name:22} {lr:7.0e} {' '.join(f'{v:.4f}' for v in r['val_auc_per_epoch']):28} "
                f"{r['wall_s']:7.1f} {r['test_auc']:8.4f}",
                flush=True,
            )
            if name not in best or r["val_auc_per_epoch"][-1] > best[name]["val_auc_per_epoch"][-1]:
                best[name] = r
    final = {name: r["val_auc_per_epoch"][-1] for name, r in best.items()}
    print(
        json.dumps(
            {
                "epochs": cfg.train.epochs,
                "img_size": cfg.train.img_size,
                "val_auc": final,
                "test_auc": {name: r["test_auc"] for name, r in best.items()},
                "wall_s": {name: round(r["wall_s"], 1) for name, r in best.items()},
                "pretrained_vs_scratch_auc": round(
                    final["lite0_pretrained"] - final["lite0_random"], 4
                ),
                "pretrained_vs_best_scratch_backbone_auc": round(
                    final["lite0_pretrained"] - final["test_resnet_scratch"], 4
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
