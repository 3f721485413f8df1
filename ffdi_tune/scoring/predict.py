"""Score images with a trained member: load its ``best.pt`` safely, score every TTA view of it.

:func:`load_member` rebuilds a trial's model from ``best.pt``; :class:`DecodedSplits` decodes each
split once per image size and shares it across members; :func:`predict_views` runs each view as a
tensor op on the decoded batch (on the device) and returns log-odds of fake (see
:mod:`ffdi_tune.scoring.inference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffdi_tune.data.layout import Split, cache_dir_of, load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError
from ffdi_tune.scoring.inference import view_log_odds

__all__ = [
    "Member",
    "load_member",
    "member_from_checkpoint",
    "DecodedSplits",
    "predict_views",
    "default_device",
]


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Member:
    """A trained model and what its checkpoint says about how to feed it."""

    name: str
    model: torch.nn.Module
    img_size: int  # the side it is fed at (the trial's evaluation size)
    mean: torch.Tensor
    std: torch.Tensor
    checkpoint: dict[str, Any]  # what best.pt holds

    @property
    def resize(self) -> str:
        """How its images are decoded: ``squash`` (whole frames) or ``crop`` (its squares are cut
        from larger ones, see :mod:`~ffdi_tune.scoring.tta`)."""
        return self.checkpoint.get("resize", "squash")

    @property
    def decode_size(self) -> int:
        """The side its images are decoded at: its own, or the crop's larger square."""
        return int(self.checkpoint.get("decode_size", self.img_size))

    @property
    def crop(self) -> int | None:
        """The square each view is cut to (``resize: crop``), else None."""
        return self.img_size if self.resize == "crop" else None


def load_member(path: str | Path, name: str, device: torch.device | None = None) -> Member:
    """Load a ``best.pt`` written by training (``weights_only=True``: no code runs from the file).

    The model is rebuilt as the trial built it (backbone and ``input`` mode) and fed images at the
    trial's evaluation size (best.pt's ``eval_img_size``: the trial's ``eval_img_size`` when it set
    one, else its ``img_size``). A file that cannot be loaded is a :class:`DataError`.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return member_from_checkpoint(checkpoint, name, device)
    except Exception as exc:  # a truncated file, a foreign pickle, a mismatched state dict...
        raise DataError(
            f"checkpoint {path} of {name} can't be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); rerun that trial or leave it out"
        ) from None


def member_from_checkpoint(
    checkpoint: dict[str, Any], name: str, device: torch.device | None = None
) -> Member:
    """The member a loaded ``best.pt`` dict (or one made like it, such as a weight soup's)
    describes, on ``device``."""
    from ffdi_tune.models.factory import create_model

    device = device or default_device()
    model = create_model(checkpoint["backbone"], input_mode=checkpoint["input"])
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return Member(
        name,
        model,
        int(checkpoint["eval_img_size"]),
        torch.tensor(checkpoint["mean"], device=device),
        torch.tensor(checkpoint["std"], device=device),
        checkpoint,
    )


class DecodedSplits:
    """Each split decoded once per image size (and perturbation), shared by the members using it."""

    def __init__(self, data: DataConfig):
        self.data = data
        self.splits: dict[str, Split] = {}
        self._images: dict[tuple[str, int, str, str], torch.Tensor] = {}

    def split(self, name: str) -> Split:
        """Split ``name``'s file list and labels, read once."""
        if name not in self.splits:
            self.splits[name] = read_split(self.data, name)
        return self.splits[name]

    def images(
        self, name: str, img_size: int, perturb=None, resize: str = "squash"
    ) -> torch.Tensor:
        """Split ``name`` at ``img_size`` (squashed, or ``resize="crop"``: centre squares at full
        resolution); with ``perturb`` (a Perturber), its perturbed copy."""
        key = (name, img_size, perturb.key if perturb is not None else "", resize)
        if key not in self._images:
            self._images[key] = load_images(
                self.split(name),
                img_size,
                cache_dir=cache_dir_of(self.data),
                perturb=perturb,
                resize=resize,
            )
        return self._images[key]

    def for_member(self, name: str, member: Member, perturb=None) -> torch.Tensor:
        """Split ``name`` decoded as ``member`` reads it."""
        return self.images(name, member.decode_size, perturb, member.resize)

    def score(
        self, member: Member, views: list[str], batch_size: int = 64, perturb=None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``member``'s log-odds per view on val and on test, and with ``perturb`` on val's
        perturbed copy (else None)."""
        val = predict_views(member, self.for_member("val", member), views, batch_size)
        test = predict_views(member, self.for_member("test", member), views, batch_size)
        robust = (
            predict_views(member, self.for_member("val", member, perturb), views, batch_size)
            if perturb is not None
            else None
        )
        return val, test, robust


def predict_views(
    member: Member, images: torch.Tensor, views: list[str], batch_size: int = 64
) -> np.ndarray:
    """A member's log-odds of fake for each view (the body in bf16 on a GPU that has it, the head in
    float32): ``len(views) x len(images)``."""
    on_gpu = member.mean.device.type == "cuda"  # load_member made the model channels-last there
    amp = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else None
    return view_log_odds(
        member.model, images, member.mean, member.std, views, batch_size, amp, on_gpu, member.crop
    )
