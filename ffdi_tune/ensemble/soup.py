"""Greedy weight soups (Wortsman et al., 2022): members fine-tuned from the same pretrained weights,
averaged into one model.

Members that share a backbone, its pretrained weights (their sha256), input mode and evaluation
size are one group. In each group of two or more, members are taken best first by their AUC on the
selection part of valset (identity view); the soup starts as the best one, and each next member is
added to it (a uniform average of the state dicts: weights and batch-norm statistics) only when the
averaged model's selection-part AUC rises. A soup of two or more members is scored like a member,
on every view, and offered to the ensemble as a candidate of kind ``soup``: one model at inference,
whatever its number of ingredients. Only the selection part is read while souping.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffdi_tune.ensemble.build import MemberPredictions
from ffdi_tune.scoring.metrics import roc_auc
from ffdi_tune.scoring.predict import DecodedSplits, member_from_checkpoint, predict_views
from ffdi_tune.tracking import Tracker, TrialRecord

__all__ = ["Soup", "average_state_dicts", "soup_group_key", "greedy_soup", "make_soups"]

SOUP_PREFIX = "soup-"  # a soup candidate's name: the prefix and its best ingredient's run id


@dataclass
class Soup:
    """One greedy soup: its ingredients (run ids, best first) and its best.pt-like checkpoint."""

    name: str
    ingredients: list[str]
    checkpoint: dict[str, Any]
    select_auc: float  # its selection-part AUC (identity view)


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of state dicts of one architecture: every floating tensor averaged (in
    float64, cast back); integer buffers (batch-norm step counts) taken from the first."""
    first = state_dicts[0]
    averaged = {}
    for key, value in first.items():
        if value.is_floating_point():
            total = sum(sd[key].double() for sd in state_dicts)
            averaged[key] = (total / len(state_dicts)).to(value.dtype)
        else:
            averaged[key] = value.clone()
    return averaged


def soup_group_key(checkpoint: dict[str, Any]) -> tuple:
    """What members must share to be souped: backbone, pretrained weights, input, sizes."""
    return (
        checkpoint["backbone"],
        checkpoint.get("weights_sha256"),
        checkpoint["input"],
        checkpoint["eval_img_size"],
        checkpoint.get("resize", "squash"),
        checkpoint.get("decode_size", checkpoint["eval_img_size"]),
        tuple(checkpoint["mean"]),
        tuple(checkpoint["std"]),
    )


def _select_auc(checkpoint: dict, images: torch.Tensor, targets: np.ndarray, batch: int) -> float:
    member = member_from_checkpoint(checkpoint, "soup")
    return roc_auc(targets, predict_views(member, images, ["identity"], batch)[0])


def greedy_soup(
    checkpoints: list[dict[str, Any]],
    names: list[str],
    images: torch.Tensor,
    targets: np.ndarray,
    batch_size: int = 64,
) -> Soup:
    """The greedy soup of one group's ``checkpoints`` (named ``names``), judged on ``images``
    (the selection part, at the group's size) and their ``targets``."""
    aucs = [_select_auc(c, images, targets, batch_size) for c in checkpoints]
    order = sorted(range(len(checkpoints)), key=lambda i: -aucs[i])
    kept, best_auc = [order[0]], aucs[order[0]]
    for i in order[1:]:
        trial = average_state_dicts([checkpoints[j]["state_dict"] for j in [*kept, i]])
        auc = _select_auc(
            {**checkpoints[order[0]], "state_dict": trial}, images, targets, batch_size
        )
        if auc > best_auc:
            kept, best_auc = [*kept, i], auc
    state = average_state_dicts([checkpoints[j]["state_dict"] for j in kept])
    checkpoint = {
        **checkpoints[order[0]],
        "state_dict": state,
        "soup_ingredients": [names[j] for j in kept],
        "weights_kind": "soup",
    }
    return Soup(SOUP_PREFIX + names[order[0]], [names[j] for j in kept], checkpoint, best_auc)


def make_soups(
    tracker: Tracker,
    runs: list[TrialRecord],
    splits: DecodedSplits,
    select: np.ndarray,
    views: list[str],
    batch_size: int = 64,
    perturb=None,
    echo=print,
) -> list[tuple[Soup, MemberPredictions]]:
    """A greedy soup per group of two or more ``runs`` that share their pretrained weights, each
    with its predictions (as :func:`~ffdi_tune.ensemble.final_stage.score_candidates` makes them);
    soups of one ingredient are left out (that is the member itself)."""
    val = splits.split("val")
    with tempfile.TemporaryDirectory(prefix="ffdi-soup-") as tmp:
        checkpoints = {
            r.run_id: torch.load(
                tracker.download(r.run_id, "checkpoint/best.pt", Path(tmp) / r.run_id),
                map_location="cpu",
                weights_only=True,
            )
            for r in runs
        }
    groups: dict[tuple, list[str]] = {}
    for run_id, checkpoint in checkpoints.items():
        groups.setdefault(soup_group_key(checkpoint), []).append(run_id)
    made = []
    for ids in groups.values():
        if len(ids) < 2:
            continue
        first = checkpoints[ids[0]]  # the group shares how its images are decoded
        size = int(first.get("decode_size", first["eval_img_size"]))
        images = splits.images("val", size, None, first.get("resize", "squash"))
        images = images[torch.as_tensor(select)]
        soup = greedy_soup(
            [checkpoints[i] for i in ids], ids, images, val.targets[select], batch_size
        )
        if len(soup.ingredients) < 2:
            echo(f"soup of {checkpoints[ids[0]]['backbone']}: no member improved the best one")
            continue
        made.append((soup, _soup_predictions(soup, splits, views, batch_size, perturb)))
        echo(f"scored {made[-1][1].label}")
    return made


def _soup_predictions(
    soup: Soup, splits: DecodedSplits, views: list[str], batch_size: int, perturb
) -> MemberPredictions:
    member = member_from_checkpoint(soup.checkpoint, soup.name)
    val, test, robust = splits.score(member, views, batch_size, perturb)
    ids = ", ".join(i[:8] for i in soup.ingredients)
    label = f"soup of {len(soup.ingredients)} {soup.checkpoint['backbone']} ({ids})"
    return MemberPredictions(soup.name, label, views, val, test, robust, soup=True)
