"""The ``train:`` section of a search space: everything one trial needs to train.

Each key may be fixed under ``train:``, searched under ``space:`` or set per backbone; a trial gets
one validated :class:`TrainSettings`. ``docs/config.md`` documents every key.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ffdi_tune.data.synth import SynthSettings
from ffdi_tune.strict import StrictModel, range_validator

__all__ = ["TrainSettings", "crop_cache_size"]


class TrainSettings(StrictModel):
    """Everything one trial needs to train; each key may be fixed in ``train`` or searched."""

    backbone: str = "resnet10t"
    pretrained: bool | str = False
    img_size: int = Field(64, ge=16, le=2048)
    batch_size: int = Field(32, ge=2)
    epochs: int = Field(2, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    # the learning-rate schedule after the warm-up: step (StepLR: lr * gamma every step_size
    # epochs) or cosine (from lr down to min_lr at the last epoch)
    schedule: Literal["step", "cosine"] = "step"
    step_size: int = Field(1, ge=1)
    gamma: float = Field(0.5, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)  # cosine's end
    # Linear warm-up from lr / 100, over this many epochs (counted in steps), before the schedule.
    warmup_epochs: float = Field(0.0, ge=0)
    head_lr_mult: float = Field(1.0, gt=0)  # the new classifier's lr is lr * head_lr_mult
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    # an exponential moving average of the weights; each epoch scores both the raw and the EMA
    # weights and keeps the better (best.pt holds it)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    # the EMA's decay grows from 0 to ema_decay as 1 - (1 + step) ** -2/3 (timm's warm-up), so an
    # early average does not lag on the random head's first steps
    ema_warmup: bool = True
    # average the weights of the last swa_epochs epochs (batch-norm statistics recomputed on
    # trainset) and score the average with the last epoch, as a third kind of weights; 0: off
    swa_epochs: int = Field(0, ge=0)
    augment: str = "flips"
    mix: Literal["none", "mixup", "cutmix", "mixup_or_cutmix"] = "none"
    mixup_alpha: float = Field(0.4, gt=0)
    cutmix_alpha: float = Field(1.0, gt=0)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    # stochastic depth; None: the model's default
    drop_path_rate: float | None = Field(None, ge=0, lt=1)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False  # torch.compile the model (pays off on a GPU for trials of many steps)
    # Where the sets with a kornia form (data.augment.has_device_form; the flips sets always go on
    # the device or while gathering) augment: auto = on the device when it is a CUDA GPU, else
    # image by image in the loader; on = on the device even on a CPU; off = in the loader.
    device_augment: Literal["auto", "on", "off"] = "auto"
    # Seeds weights, shuffling and augmentation. A number fixes it; null (default): each trial of
    # a search gets its own, derived from search.seed and the trial's number, so ensemble members
    # differ (a trial run alone gets 0).
    seed: int | None = None
    eval_img_size: int | None = Field(None, ge=16, le=2048)  # validate and predict at this side
    # How an image becomes the model's input. squash: the whole frame resized to img_size (JPEG
    # draft decoding, bilinear). crop: decoded at full resolution, its shorter side brought to
    # cache_size (once, into the decode cache), then never resized again: training takes a random
    # img_size crop of it, validation and prediction its centre (TTA: crop_tl... its corners)
    resize: Literal["squash", "crop"] = "squash"
    # the side crop's decode cache keeps (>= img_size and eval size); null: 1.25 x the larger
    cache_size: int | None = Field(None, ge=16, le=4096)
    # rgb+srm adds fixed SRM noise residuals (ffdi_tune.models.srm)
    input: Literal["rgb", "rgb+srm"] = "rgb"
    jpeg_quality: tuple[int, int] = (30, 95)  # quality range of the jpeg augmentation set
    jpeg_p: float = Field(0.5, ge=0, le=1)  # share of images the jpeg set re-compresses
    # forgery synthesis while training: {kind: selfblend, p: 0.3} turns a share p of each batch's
    # real images into self-blended fakes (ffdi_tune.data.synth); none: off
    synth: SynthSettings = SynthSettings()

    @field_validator("jpeg_quality", mode="before")
    @classmethod
    def _quality_from_label(cls, v: Any) -> Any:
        # A searched choice of ranges reaches a trial as its JSON label (see space.suggest).
        if isinstance(v, str) and v.strip().startswith("["):
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                pass
        return v

    _quality_range = range_validator("jpeg_quality", 1, 100)

    @field_validator("device_augment", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on / off as true / false
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _even_batch_for_mix(self) -> TrainSettings:
        if self.mix != "none" and self.batch_size % 2:
            raise ValueError(
                f"mix={self.mix} pairs images within a batch, so batch_size must be even, "
                f"but got {self.batch_size}"
            )
        return self

    @model_validator(mode="after")
    def _cache_holds_the_crops(self) -> TrainSettings:
        largest = max(self.img_size, self.eval_size)
        if self.resize == "crop" and self.cache_size is not None and self.cache_size < largest:
            raise ValueError(
                f"cache_size={self.cache_size} is smaller than the {largest} px crops taken from "
                "it; raise cache_size to at least img_size (and eval_img_size), or leave it null"
            )
        return self

    @property
    def eval_size(self) -> int:
        """The side validation and prediction feed the model (``eval_img_size`` or ``img_size``)."""
        return self.eval_img_size or self.img_size

    @property
    def decode_size(self) -> int:
        """The side images are decoded (and cached) at for training: ``img_size`` when squashed,
        ``cache_size`` (default 1.25 x the larger of the training and evaluation sides, a multiple
        of 8) when cropped."""
        if self.resize == "squash":
            return self.img_size
        return self.cache_size or crop_cache_size(max(self.img_size, self.eval_size))

    @property
    def eval_decode_size(self) -> int:
        """The side validation and prediction decode at: the evaluation size when squashed, the
        crop's cache side otherwise (the centre is cut from it)."""
        return self.eval_size if self.resize == "squash" else self.decode_size


def crop_cache_size(side: int) -> int:
    """The default cache side of ``resize: crop`` for crops of ``side``: 1.25 x, a multiple of 8.

    >>> crop_cache_size(64), crop_cache_size(512)
    (80, 640)
    """
    return -(-round(side * 1.25) // 8) * 8
