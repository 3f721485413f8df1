"""timm backbones: name checks and model creation with offline-safe pretrained weights."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

from ffdi_tune.errors import ConfigError, did_you_mean

__all__ = ["check_backbone", "create_model", "check_pretrained"]

# Bounded waits so that an unreachable hub fails fast instead of hanging a trial.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")


@lru_cache(maxsize=1)
def _all_models() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def check_backbone(name: str) -> None:
    """Raise ValueError with close timm names unless ``name`` is a timm model."""
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"unknown timm backbone {name!r}{did_you_mean(name, _all_models())}; "
            "list valid names with python -c \"import timm; print(timm.list_models('*effic*'))\""
        )


def create_model(backbone: str, pretrained: bool | str = False, drop_rate: float = 0.0) -> torch.nn.Module:
    """A timm classifier with two outputs (0 = real, 1 = fake).

    ``pretrained`` is False, True (timm's own source: hub or local cache) or the path of a weights
    file (``.pth``/``.pt``/``.bin``/``.safetensors``, loaded with ``weights_only`` semantics;
    a 1000-class head is dropped and re-initialised).

    >>> create_model("resnet10t").num_classes
    2
    """
    import timm

    kwargs = {"num_classes": 2, "drop_rate": drop_rate}
    if pretrained is False:
        return timm.create_model(backbone, pretrained=False, **kwargs)
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"pretrained: weights file {str(path)!r} does not exist; give an existing file or pretrained: false"
            )
        overlay = {"file": str(path.resolve())}
        try:
            return timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except Exception as exc:  # timm/torch raise many kinds on a bad file
            raise ConfigError(
                f"pretrained: cannot load {str(path)!r} into {backbone}: {str(exc).splitlines()[0][:200]}; "
                "check that the file holds this backbone's state dict"
            ) from None
    try:
        return timm.create_model(backbone, pretrained=True, **kwargs)
    except Exception as exc:
        raise ConfigError(
            f"pretrained: true, but the weights of {backbone} can't be had "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); connect to the model hub once "
            "to fill the cache, give a local weights file path, or set pretrained: false"
        ) from None


def check_pretrained(backbones: list[str], pretrained: list[bool | str]) -> None:
    """Fetch or load pretrained weights once on the driver so trials fail early, not one by one."""
    for b in backbones:
        for p in pretrained:
            if p is not False:
                create_model(b, p)
