"""Do the members' new options help? Each option of a trial's recipe off and on, over seeds, on
generated data with an unseen forgery in testset.

Per seed: a demo dataset (``--unseen-forgery double_jpeg``: every test fake carries a forgery kind
that trainset and valset never show), valset split into its selection and report parts as a search
splits it. Per arm: ``--members`` trials of the demo's default recipe (pretrained Lite0,
AdamW 1e-3, StepLR, flips), each with its own seed, trained on trainset and scored on the selection
part (``train_trial``, the trainer the search runs, without Ray); then the final stage's
``build_ensemble`` (``combine: auto``, TTA ``identity+hflip``) over them. Arms:

- ``base``: the default recipe;
- ``ema_cold`` / ``ema_warm``: ``ema_decay: 0.998`` without / with the EMA warm-up (each epoch
  keeps the better of the raw and the EMA weights either way);
- ``cosine``: ``schedule: cosine``;
- ``swa``: ``swa_epochs: 2``;
- ``selfblend``: ``synth: {kind: selfblend, p: 0.3}``;
- ``soup``: the ``base`` members, shipped as their greedy weight soup (``combine: soup``);
- ``crop``: ``resize: crop`` with ``cache_size: 64``: the 64 px files are never resized; training
  takes random 48 px windows, validation and prediction the centre one;
- ``refit``: the ``base`` ensemble (``auto``, no soups), each shipped member then trained again
  once (a new seed, its best epoch count) on trainset plus the selection part, in its place
  (``refit: {seeds: 1}``); the extra training is its cost;
- ``refit2``: the same with two refits per member sharing its weight (``refit: {seeds: 2}``; the
  first refit is ``refit``'s own, trained once for both arms).

Prints, per arm, the mean and seed-to-seed spread of the report-part AUC and the test AUC of the
best member (best on the selection part) and of the shipped ensemble; the last line is JSON.
About ``seeds x arms x members`` trials of ``--epochs`` epochs (2 cores: ~25 s each):

    python bench/recipes.py [--seeds 0 1 2 3] [--epochs 4] [--members 2] [--arms base swa ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.holdout import split_valset
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.build import MemberPredictions, build_ensemble
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.ensemble.refit import SEED_STRIDE, refit_result
from ffdi_tune.ensemble.soup import greedy_soup
from ffdi_tune.scoring.metrics import roc_auc
from ffdi_tune.scoring.predict import member_from_checkpoint, predict_views
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import BEST_FILE, Refit, train_trial

BASE = dict(
    backbone="tf_efficientnet_lite0",
    pretrained=True,
    img_size=48,
    batch_size=32,
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.01,
    augment="flips",
)
ARMS = {
    "base": {},
    "ema_cold": {"ema_decay": 0.998, "ema_warmup": False},
    "ema_warm": {"ema_decay": 0.998, "ema_warmup": True},
    "cosine": {"schedule": "cosine"},
    "swa": {"swa_epochs": 2},
    "selfblend": {"synth": {"kind": "selfblend", "p": 0.3}},
    "crop": {"resize": "crop", "cache_size": 64},
    "soup": {},  # the base members, souped
    "refit": {},  # the base members' ensemble, each shipped member refit once
    "refit2": {},  # ... refit twice
}
REFIT_SEEDS = {"refit": 1, "refit2": 2}
VIEWS = ["identity", "hflip"]
CROP_SOURCES: dict = {}  # the seed's val and test splits, for crop members' own decode


def train_members(data: Path, select: tuple[str, ...], changes: dict, args, seed: int) -> list:
    """``args.members`` trials of the base recipe with ``changes``: their best.pt dicts."""
    members = []
    for k in range(args.members):
        settings = TrainSettings(**BASE, **changes, epochs=args.epochs, seed=seed * 100 + k)
        kept = {}

        def report(metrics, folder, kept=kept):
            kept["best"] = torch.load(Path(folder) / BEST_FILE, weights_only=True)

        train_trial(
            settings, DataConfig(root=str(data)), report, val_names=select, device="cpu",
            robust_val=None,
        )  # fmt: skip
        members.append(kept["best"])
    return members


def refit_arm(
    data: Path, select, base: list, images, test_targets, val, parts, seeds: int, trained: dict
) -> dict:
    """The base members' ensemble, then each shipped member trained again ``seeds`` times on
    trainset plus the selection part, its refits shipped in its place sharing its weight
    (``trained``: refits of this data seed already trained, by name)."""
    val_images, test_images = images
    candidates = [predictions(f"m{k}", c, val_images, test_images) for k, c in enumerate(base)]
    row = judge(candidates, "auto", val, test_targets, parts)
    recipe = EnsembleRecipe(top_k=len(base), tta=VIEWS, refit={"seeds": seeds})
    result = build_ensemble(candidates, val.targets, recipe, *parts)
    scored, refits = {c.name: c for c in candidates}, {}
    for name in result.members:
        best = base[int(name[1:])]
        refits[name] = [f"{name}r{k}" for k in range(1, seeds + 1)]
        for k, refit_name in enumerate(refits[name], start=1):
            if refit_name not in trained:
                # its schedule, a new seed
                changes = {"seed": best["settings"]["seed"] + k * SEED_STRIDE}
                kept = {}

                def report(metrics, folder, kept=kept):
                    kept["best"] = torch.load(Path(folder) / BEST_FILE, weights_only=True)

                train_trial(
                    TrainSettings(**{**best["settings"], **changes}), DataConfig(root=str(data)),
                    report, device="cpu", robust_val=None,
                    refit=Refit(select, best.get("weights_kind", "raw"), int(best["epoch"])),
                )  # fmt: skip
                trained[refit_name] = predictions(refit_name, kept["best"], val_images, test_images)
            scored[refit_name] = trained[refit_name]
    after = refit_result(result, refits, scored, val.targets, parts[1])
    row.update(
        before_refit_report_auc=float(result.metrics["holdout_auc"]),
        before_refit_test_auc=roc_auc(test_targets, result.test_pred),
        ensemble_report_auc=float(after.metrics["holdout_auc"]),
        ensemble_test_auc=roc_auc(test_targets, after.test_pred),
    )
    return row


def predictions(name: str, checkpoint: dict, val_images, test_images) -> MemberPredictions:
    member = member_from_checkpoint(checkpoint, name, torch.device("cpu"))
    if member.resize == "crop":  # its own squares, decoded from the files again
        val_images = load_images(CROP_SOURCES["val"], member.decode_size, resize="crop")
        test_images = load_images(CROP_SOURCES["test"], member.decode_size, resize="crop")
    return MemberPredictions(
        name,
        name,
        VIEWS,
        predict_views(member, val_images, VIEWS),
        predict_views(member, test_images, VIEWS),
    )


def judge(candidates, combine: str, val, test_targets, parts) -> dict:
    """The best member's and the shipped ensemble's report-part and test AUCs."""
    top_k = len([c for c in candidates if not c.soup])
    recipe = EnsembleRecipe(top_k=top_k, combine=combine, tta=VIEWS)
    result = build_ensemble(candidates, val.targets, recipe, *parts)
    rows = result.table.set_index("member")
    members = result.table[result.table["kind"] == "member"]
    best = members.sort_values("select_objective", ascending=False)["member"].iloc[0]
    by_name = {c.name: c for c in candidates}
    best_test = roc_auc(test_targets, by_name[best].test.mean(axis=0))
    return {
        "member_report_auc": float(rows.loc[best, "holdout_auc_tta"]),
        "member_test_auc": best_test,
        "shipped": result.chosen,
        "ensemble_report_auc": float(result.metrics["holdout_auc"]),
        "ensemble_test_auc": roc_auc(test_targets, result.test_pred),
    }


def run_seed(seed: int, args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"ffdi-recipes-{seed}-") as tmp:
        data = write_demo_dataset(
            Path(tmp) / "data", n_train=args.n_train, n_val=400, n_test=400, size=64, seed=seed,
            difficulty=0.5, unseen_forgery="double_jpeg",
        )  # fmt: skip
        cfg = DataConfig(root=str(data))
        val, test = read_split(cfg, "val"), read_split(cfg, "test")
        test_targets = pd.read_csv(data / "testset_label.txt").set_index("img_name")
        test_targets = test_targets.loc[list(test.names), "target"].to_numpy()
        CROP_SOURCES.update(val=val, test=test)
        holdout = split_valset(val, 0.5, seed)
        parts = holdout.indices(val.names)
        val_images, test_images = load_images(val, 48), load_images(test, 48)
        base, trained_refits = None, {}
        for arm in args.arms:
            if arm == "soup":
                base = base or train_members(data, holdout.select_names, {}, args, seed)
                soup = greedy_soup(
                    base,
                    [f"m{k}" for k in range(len(base))],
                    val_images[torch.as_tensor(parts[0])],
                    val.targets[parts[0]],
                )
                candidates = [
                    predictions(f"m{k}", c, val_images, test_images) for k, c in enumerate(base)
                ]
                souped = predictions(soup.name, soup.checkpoint, val_images, test_images)
                souped.soup = True
                row = judge([*candidates, souped], "soup", val, test_targets, parts)
                row["soup_ingredients"] = len(soup.ingredients)
            elif arm in REFIT_SEEDS:
                base = base or train_members(data, holdout.select_names, {}, args, seed)
                images = (val_images, test_images)
                row = refit_arm(
                    data, holdout.select_names, base, images, test_targets, val, parts,
                    REFIT_SEEDS[arm], trained_refits,
                )  # fmt: skip
            else:
                members = train_members(data, holdout.select_names, ARMS[arm], args, seed)
                if arm == "base":
                    base = members
                candidates = [
                    predictions(f"m{k}", c, val_images, test_images) for k, c in enumerate(members)
                ]
                row = judge(candidates, "auto", val, test_targets, parts)
                row["kept"] = ",".join(c.get("weights_kind", "raw") for c in members)
            row.update(arm=arm, seed=seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def summarise(rows: list[dict], arms: list[str]) -> dict:
    out = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        out[arm] = {}
        keys = ["member_report_auc", "member_test_auc", "ensemble_report_auc", "ensemble_test_auc"]
        keys += [k for k in ("before_refit_report_auc", "before_refit_test_auc") if k in mine[0]]
        for key in keys:
            values = [r[key] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            out[arm][key] = (round(float(np.mean(values)), 4), round(sd, 4))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [row for seed in args.seeds for row in run_seed(seed, args)]
    summary = summarise(rows, args.arms)
    print(f"{'arm':10} {'member report':>16} {'member test':>16} {'ens. report':>16} "
          f"{'ens. test':>16}")  # fmt: skip
    for arm, s in summary.items():
        cells = [f"{m:.4f} ± {sd:.4f}" for m, sd in list(s.values())[:4]]
        print(f"{arm:10} " + " ".join(f"{c:>16}" for c in cells))
        if "before_refit_test_auc" in s:
            (report, _), (test, _) = s["before_refit_report_auc"], s["before_refit_test_auc"]
            print(f"{'':10} before its refit: ensemble report {report:.4f}, test {test:.4f}")
    print(json.dumps({"epochs": args.epochs, "members": args.members, "rows": rows,
                      "summary": summary}))  # fmt: skip


if __name__ == "__main__":
    main()
