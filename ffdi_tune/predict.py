"""Score images with a trained member: load ``best.pt`` safely, predict every TTA view from one decode.

:class:`DecodedSplits` decodes each split once per image size and shares it across members;
:func:`predict_views` runs each view as a tensor op on the decoded batch (on the device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffdi_tune.config import DataConfig
from ffdi_tune.data import Split, cache_dir_of, eval_loader, load_images, read_split, to_model_input
from ffdi_tune.errors import DataError
from ffdi_tune.tta import apply_view

__all__ = ["Member", "load_member", "DecodedSplits", "view_probabilities", "predict_views", "default_device"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Member:
    """A trained model and what its checkpoint says about how to feed it."""

    name: str
    model: torch.nn.Module
    img_size: int  # the side it is fed at (the trial's evaluation size)
    mean: torch.Tensor
    std: torch.Tensor
    checkpoint: dict[str, Any]


def load_member(path: str | Path, name: str, device: torch.device | None = None) -> Member:
    """Load a ``best.pt`` written by training (``weights_only=True``: no code runs from the file).

    The model is rebuilt as the trial built it (backbone and ``input`` mode) and fed images at the
    checkpoint's evaluation size (``eval_img_size`` when the trial set one, else ``img_size``).
    """
    from ffdi_tune.models import create_model

    device = device or default_device()
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = create_model(ckpt["backbone"], input_mode=ckpt.get("input", "rgb"))
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:  # a truncated file, a foreign pickle, a mismatched state dict...
        raise DataError(f"checkpoint {path} of {name} can't be loaded ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160]}); rerun that trial or leave it out") from None
    model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    img_size = int(ckpt.get("eval_img_size") or ckpt["img_size"])
    return Member(name, model, img_size, torch.tensor(ckpt["mean"], device=device),
                  torch.tensor(ckpt["std"], device=device), ckpt)


class DecodedSplits:
    """Each split decoded once per image size (and perturbation), shared by every member using it."""

    def __init__(self, data: DataConfig):
        self.data = data
        self.splits: dict[str, Split] = {}
        self._images: dict[tuple[str, int, str], torch.Tensor] = {}

    def split(self, name: str) -> Split:
        if name not in self.splits:
            self.splits[name] = read_split(self.data, name)
        return self.splits[name]

    def images(self, name: str, img_size: int, perturb=None) -> torch.Tensor:
        """Split ``name`` at ``img_size``; with ``perturb`` (a Perturber), its perturbed copy."""
        key = (name, img_size, perturb.key if perturb is not None else "")
        if key not in self._images:
            self._images[key] = load_images(self.split(name), img_size, cache_dir=cache_dir_of(self.data),
                                            perturb=perturb)
        return self._images[key]


@torch.no_grad()
def view_probabilities(model: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                       views: list[str], batch_size: int = 64, amp_dtype: torch.dtype | None = None,
                       channels_last: bool = False) -> np.ndarray:
    """Probability of fake for each view and uint8 image: array ``len(views) x len(images)``.

    Each batch is moved and normalised once; every view is a tensor op on it, on the device.
    """
    model.eval()
    device = mean.device
    out = np.empty((len(views), len(images)), dtype=np.float64)
    start = 0
    for batch in eval_loader(images, batch_size):
        x = to_model_input(batch, mean, std, device, channels_last)
        for v, view in enumerate(views):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(apply_view(view, x))
            out[v, start : start + len(batch)] = logits.float().softmax(1)[:, 1].cpu().numpy()
        start += len(batch)
    return out


def predict_views(member: Member, images: torch.Tensor, views: list[str], batch_size: int = 64) -> np.ndarray:
    """A member's probabilities for each view (bf16 autocast on a GPU that has it)."""
    cuda = member.mean.device.type == "cuda"
    amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    return view_probabilities(member.model, images, member.mean, member.std, views, batch_size, amp, cuda)
