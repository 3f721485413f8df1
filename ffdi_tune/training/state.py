"""What one trial trains and scores with, built once from its settings, and how far it has got.

:func:`build_trial_state` seeds the trial, builds the model (with its EMA twin and its
``torch.compile``'d twin when asked), the optimizer, schedule, MixUp / CutMix and AMP of
:mod:`~ffdi_tune.training.optimization`, decodes trainset and valset (and valset's perturbed copy
when ``robust_val`` is on) and builds the augmentation where
:mod:`~ffdi_tune.training.placement` puts it. The resulting :class:`TrialState` also counts the
epochs and steps done and keeps the best epoch so far.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ffdi_tune.data.layout import Split, cache_dir_of, load_images, read_split
from ffdi_tune.data.perturb import Perturber, RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.data.synth import SelfBlender
from ffdi_tune.errors import ConfigError
from ffdi_tune.models.factory import create_model
from ffdi_tune.models.weights import Weights, resolve_weights
from ffdi_tune.scoring.epoch_metrics import robust_metrics
from ffdi_tune.training.optimization import amp_dtype, make_mixup, make_optimizer, make_scheduler
from ffdi_tune.training.placement import Augmenters, augmenters, loader_workers
from ffdi_tune.training.settings import TrainSettings

__all__ = [
    "seed_everything",
    "Refit",
    "RefitJob",
    "TrialSplits",
    "TrialState",
    "build_trial_state",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Refit:
    """A refit of a chosen configuration: train on trainset plus the valset images ``val_names``
    (the search's selection part, never its report part), score nothing, stop after ``epochs``
    epochs (the trial's best epoch; its schedule still runs over its own ``epochs``) and keep that
    epoch's weights of ``kind`` (``raw``, ``ema`` or ``swa``: what the search's trial kept)."""

    val_names: tuple[str, ...]
    kind: str = "raw"
    epochs: int | None = None  # None: every epoch of the settings


@dataclass(frozen=True)
class RefitJob:
    """One refit to train: of the search trial whose run is ``member``, its ``settings`` (a
    :class:`~ffdi_tune.training.settings.TrainSettings` as a dict, with a new ``seed``), the kind
    of weights it kept and its best epoch (where the refit stops)."""

    member: str
    settings: dict[str, Any]
    kind: str
    epochs: int


@dataclass
class TrialSplits:
    """The trial's splits and their decoded images (valset's perturbed copy when robust_val is on).

    ``val_split`` is the selection part of valset in a search; trainset is decoded at the training
    size, valset at the evaluation size.
    """

    train_split: Split
    val_split: Split
    train_images: torch.Tensor
    val_images: torch.Tensor
    robust_images: torch.Tensor | None


@dataclass
class TrialState:
    """Everything one trial trains and scores with, and its progress (epochs, steps, best epoch)."""

    settings: TrainSettings
    metric: str  # the search metric that picks the best epoch
    device: torch.device
    seed: int
    weights: Weights  # where the pretrained weights came from
    model: torch.nn.Module
    step_model: torch.nn.Module  # the model, or its torch.compile'd twin (same parameters)
    ema: Any  # timm's ModelEmaV3 of the model with ``ema_decay`` (warmed up), else None
    swa: Any  # torch's AveragedModel of the last ``swa_epochs`` epochs' weights, else None
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's StepLRScheduler, stepped per optimizer step
    grad_scaler: torch.amp.GradScaler  # enabled for float16 AMP only
    mixup: Any  # timm's Mixup, or None
    mean: torch.Tensor  # the normalisation of the backbone's pretrained config
    std: torch.Tensor
    amp_dtype: torch.dtype | None
    channels_last: bool
    splits: TrialSplits
    augmenters: Augmenters
    num_workers: int  # DataLoader processes of the per-image augmentation
    synth: Any  # a SelfBlender with train.synth on, else None
    started_at: float  # when the caller began the trial (time.perf_counter())
    epoch: int = 0  # the last epoch done
    step: int = 0  # optimizer steps done
    best_value: float | None = None  # the best epoch's value of ``metric``
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: dict[str, Any] | None = None  # what best.pt holds
    first_batch_s: float | None = None  # from started_at to the end of the first training step
    # whose weights the last evaluation kept: "raw", "ema" or "swa" (the best of those scored)
    kept: str = "raw"
    swa_ready: bool = False  # the SWA average is complete (its last epoch done, BN recomputed)
    refit: Refit | None = None  # a refit trains on more images and scores none
    # what the last epoch reported (kept in last.pt): a trial resumed after its last epoch reports
    # it again, so that the search records the trial as ended there
    last_metrics: dict[str, Any] | None = None

    def weights_of(self, kind: str) -> torch.nn.Module:
        """The model of a kind of weights: ``raw`` (trained), ``ema`` (their moving average) or
        ``swa`` (the average of the last epochs)."""
        if kind == "raw":
            return self.model
        return (self.ema if kind == "ema" else self.swa).module

    def kinds(self) -> list[str]:
        """The kinds of weights an evaluation now scores (the trained ones first)."""
        return ["raw"] + ["ema"] * (self.ema is not None) + ["swa"] * self.swa_ready

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights the last evaluation kept (saved in best.pt when the epoch is the best)."""
        return self.weights_of(self.kept)


def build_trial_state(
    settings: TrainSettings,
    data: DataConfig,
    metric: str,
    augment_sets: dict[str, list[dict]] | None,
    device: torch.device,
    started_at: float,
    robust_val: RobustValConfig | None,
    val_names: tuple[str, ...] | None,
    refit: Refit | None = None,
) -> TrialState:
    """Seed, build and decode everything the trial needs (the arguments are
    :func:`~ffdi_tune.training.trial.train_trial`'s); ConfigError when ``metric`` needs the
    perturbed valset and robust_val is off."""
    robust_on = robust_val is not None and robust_val.enabled and refit is None
    if metric in robust_metrics() and not robust_on and refit is None:
        raise ConfigError(
            f"metric {metric} is scored on the perturbed valset, but robust_val is off; "
            "enable robust_val or use val_auc"
        )
    # A search gives every trial its own seed (space.trial_seed); a lone trial gets 0.
    seed = 0 if settings.seed is None else settings.seed
    seed_everything(seed)
    weights, model, channels_last = _build_model(settings, device)
    optimizer = make_optimizer(model, settings)
    splits = (
        _refit_splits(settings, data, refit)
        if refit is not None
        else _load_splits(settings, data, val_names, robust_val if robust_on else None)
    )
    augment = augmenters(settings, augment_sets, device)
    amp = amp_dtype(settings.amp, device)
    pretrained_cfg = model.pretrained_cfg
    steps_per_epoch = len(splits.train_images) // min(settings.batch_size, len(splits.train_images))
    return TrialState(
        settings=settings,
        metric=metric,
        device=device,
        seed=seed,
        weights=weights,
        model=model,
        step_model=torch.compile(model) if settings.compile else model,
        ema=_ema_of(model, settings.ema_decay, settings.ema_warmup),
        swa=torch.optim.swa_utils.AveragedModel(model) if settings.swa_epochs else None,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, settings, steps_per_epoch),
        grad_scaler=torch.amp.GradScaler("cuda", enabled=amp == torch.float16),
        mixup=make_mixup(settings),
        mean=torch.tensor(pretrained_cfg.get("mean", (0.485, 0.456, 0.406)), device=device),
        std=torch.tensor(pretrained_cfg.get("std", (0.229, 0.224, 0.225)), device=device),
        amp_dtype=amp,
        channels_last=channels_last,
        splits=splits,
        augmenters=augment,
        num_workers=loader_workers(data.num_workers, augment.where, device),
        synth=SelfBlender(settings.synth) if settings.synth.on else None,
        started_at=started_at,
        refit=refit,
    )


def _build_model(
    settings: TrainSettings, device: torch.device
) -> tuple[Weights, torch.nn.Module, bool]:
    """The trial's pretrained weights, its model on ``device`` and whether that is channels-last."""
    weights = resolve_weights(settings.backbone, settings.pretrained)
    model = create_model(
        settings.backbone,
        weights,
        settings.drop_rate,
        input_mode=settings.input,
        drop_path_rate=settings.drop_path_rate,
    ).to(device)
    channels_last = (
        device.type == "cuda" if settings.channels_last == "auto" else bool(settings.channels_last)
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return weights, model, channels_last


def _ema_of(model: torch.nn.Module, decay: float | None, warmup: bool):
    """timm's EMA of ``model`` with ``decay`` (its decay warmed up from 0 with ``warmup``), or None
    without one."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=warmup) if decay else None


def _load_splits(
    settings: TrainSettings,
    data: DataConfig,
    val_names: tuple[str, ...] | None,
    robust_val: RobustValConfig | None,
) -> TrialSplits:
    """Read trainset and valset (only ``val_names`` of it, when given) and decode them; with
    ``robust_val``, valset's perturbed copy too."""
    train_split, val_split = read_split(data, "train"), read_split(data, "val")
    if val_names is not None:  # the search's selection part: the report part is never read here
        val_split = val_split.only(val_names)
    cache_dir, resize = cache_dir_of(data), settings.resize
    train_size = settings.decode_size
    train_images = load_images(train_split, train_size, cache_dir=cache_dir, resize=resize)
    # Validation (and best.pt's prediction) may run at a larger side than training.
    size = settings.eval_decode_size
    val_images = load_images(val_split, size, cache_dir=cache_dir, resize=resize)
    robust_images = (
        load_images(
            val_split, size, cache_dir=cache_dir, perturb=Perturber(robust_val), resize=resize
        )
        if robust_val is not None
        else None
    )
    return TrialSplits(train_split, val_split, train_images, val_images, robust_images)


def _refit_splits(settings: TrainSettings, data: DataConfig, refit: Refit) -> TrialSplits:
    """Trainset plus the refit's valset images (named ``valset/<name>``: a name may be in both) to
    train on, decoded as one split (one memory-mapped cache entry, not a copy in memory), and
    nothing to score: no other valset image is read."""
    train, val = read_split(data, "train"), read_split(data, "val").only(refit.val_names)
    both = Split(
        "train",
        train.names + tuple(f"valset/{n}" for n in val.names),
        train.paths + val.paths,
        np.concatenate([train.targets, val.targets]),
    )
    images = load_images(
        both, settings.decode_size, cache_dir=cache_dir_of(data), resize=settings.resize
    )
    empty = torch.zeros((0, *images.shape[1:]), dtype=images.dtype)
    return TrialSplits(both, val.only(()), images, empty, None)
