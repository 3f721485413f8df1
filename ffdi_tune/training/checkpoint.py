"""A trial's checkpoint folder, handed to the reporter after each epoch, and resuming from one.

The folder holds ``last.pt`` (full state, to resume: weights, optimizer, EMA, epochs and steps
done, the best epoch's metrics) and ``best.pt`` (the weights that scored best on the search metric
so far, with what prediction needs: backbone, input mode, training and evaluation size,
normalisation, the trial's settings and where its pretrained weights came from; with ``ema_decay``
they are the raw or the EMA weights, whichever scored better that epoch, and after the last epoch
with ``swa_epochs`` possibly the SWA average, named in ``weights_kind``). Both load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ffdi_tune.scoring.epoch_metrics import is_better
from ffdi_tune.training.state import TrialState

__all__ = [
    "BEST_FILE",
    "LAST_FILE",
    "STAND_IN_FILE",
    "Reporter",
    "keep_if_best",
    "report_checkpoint",
    "restore",
]

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
# in a checkpoint folder copied in for one Tune had deleted (search.rounds): the trial resumed from
# it may be one whose end Tune never recorded
STAND_IN_FILE = ".ffdi-stand-in"

# report(metrics, checkpoint_dir) is called once per epoch; the folder is deleted after it returns.
Reporter = Callable[[dict[str, float], Path], None]


def keep_if_best(state: TrialState, metrics: dict[str, float]) -> None:
    """Make the epoch of ``metrics`` the best one (and its weights best.pt's) if it beats the best
    so far on the trial's metric; a refit, which scores nothing, keeps its last epoch."""
    if state.refit is None and not is_better(state.metric, metrics[state.metric], state.best_value):
        return
    state.best_value, state.best_metrics = metrics.get(state.metric), dict(metrics)
    state.best_checkpoint = _best_checkpoint(state, metrics)


def _best_checkpoint(state: TrialState, metrics: dict[str, float]) -> dict[str, Any]:
    """What best.pt holds for the epoch of ``metrics``."""
    settings = state.settings
    # Copies: on a CPU .cpu() would alias the live weights, which later epochs overwrite.
    weights = {k: v.detach().to("cpu", copy=True) for k, v in state.eval_model.state_dict().items()}
    return {
        "state_dict": weights,
        "backbone": settings.backbone,
        "input": settings.input,
        "img_size": settings.img_size,
        "eval_img_size": settings.eval_size,
        # how prediction decodes: squashed at eval_img_size, or cropped from decode_size squares
        "resize": settings.resize,
        "decode_size": settings.eval_decode_size,
        "mean": [float(v) for v in state.mean.cpu()],
        "std": [float(v) for v in state.std.cpu()],
        "settings": settings.model_dump(),
        "weights_source": state.weights.source,
        "weights_sha256": state.weights.sha256,
        "epoch": metrics["epoch"],
        "weights_kind": state.kept,
        "metric": state.metric,
        "metrics": dict(metrics),
    }


def _last_checkpoint(state: TrialState) -> dict[str, Any]:
    """What last.pt holds: the state to resume from."""
    last = {
        "last_metrics": state.last_metrics,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best_value": state.best_value,
        "best_metrics": state.best_metrics,
    }
    if state.ema is not None:
        last["ema"] = state.ema.state_dict()
    if state.swa is not None:
        last["swa"] = state.swa.state_dict()
        # the first epoch the average is over: a trial trained further has a window of its own
        last["swa_first"] = state.settings.epochs - state.settings.swa_epochs + 1
    return last


def report_checkpoint(state: TrialState, metrics: dict[str, float], report: Reporter) -> None:
    """Write best.pt and last.pt into a fresh folder and hand it to ``report`` with the metrics
    and ``weights_kept``, the kind of weights best.pt holds (``raw``, ``ema`` or ``swa``)."""
    state.last_metrics = dict(metrics)
    with tempfile.TemporaryDirectory(prefix="ffdi-ckpt-") as tmp:
        torch.save(state.best_checkpoint, Path(tmp) / BEST_FILE)
        torch.save(_last_checkpoint(state), Path(tmp) / LAST_FILE)
        kind = state.best_checkpoint.get("weights_kind", "raw")
        report({**metrics, "weights_kept": kind}, Path(tmp))


def restore(state: TrialState, folder: Path) -> None:
    """Continue after the epoch a checkpoint folder written by :func:`report_checkpoint` holds."""
    last = torch.load(Path(folder) / LAST_FILE, map_location=state.device, weights_only=True)
    state.model.load_state_dict(last["model"])
    state.optimizer.load_state_dict(last["optimizer"])
    if state.ema is not None:
        state.ema.load_state_dict(last["ema"])
    window_from = state.settings.epochs - state.settings.swa_epochs
    same_window = last.get("swa_first") == window_from + 1
    if state.swa is not None and "swa" in last and same_window and last["epoch"] > window_from:
        # (a trial trained further starts its own average over its new last epochs)
        state.swa.load_state_dict(last["swa"])
    state.epoch, state.best_value, state.step = last["epoch"], last["best_value"], last["step"]
    state.last_metrics = last.get("last_metrics")
    state.best_metrics = dict(last["best_metrics"])
    state.best_checkpoint = torch.load(
        Path(folder) / BEST_FILE, map_location="cpu", weights_only=True
    )
