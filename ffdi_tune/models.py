"""timm backbones: name checks and model creation with offline-safe pretrained weights."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch

from ffdi_tune.errors import ConfigError, did_you_mean

__all__ = ["INPUT_MODES", "check_backbone", "create_model", "check_pretrained"]

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


def _srm_input(model: torch.nn.Module) -> torch.nn.Module:
    from ffdi_tune.srm import SrmInput

    return SrmInput(model)


# What the model sees besides RGB: setting ``input`` -> wrapper around the timm backbone.
INPUT_MODES = {
    "rgb": lambda model: model,
    "rgb+srm": _srm_input,  # SRM noise residuals through a learned 6->3 adapter (ffdi_tune.srm)
}


def create_model(backbone: str, pretrained: bool | str = False, drop_rate: float = 0.0,
                 input_mode: str = "rgb") -> torch.nn.Module:
    """A timm classifier with two outputs (0 = real, 1 = fake).

    ``pretrained`` is False, True (timm's own source: hub or local cache) or the path of a weights
    file (``.pth``/``.pt``/``.bin``/``.safetensors``, loaded with ``weights_only`` semantics;
    a 1000-class head is dropped and re-initialised). ``input_mode`` is a key of
    :data:`INPUT_MODES` (``rgb+srm`` puts :class:`~ffdi_tune.srm.SrmInput` in front).

    >>> create_model("resnet10t").num_classes
    2
    """
    if input_mode not in INPUT_MODES:
        raise ConfigError(f"input: unknown input mode {input_mode!r}{did_you_mean(input_mode, INPUT_MODES)}; "
                          f"valid modes are {', '.join(INPUT_MODES)}")
    return INPUT_MODES[input_mode](_timm_model(backbone, pretrained, drop_rate))


def _timm_model(backbone: str, pretrained: bool | str, drop_rate: float) -> torch.nn.Module:
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
    _check_weights_reachable(backbone)
    try:
        return timm.create_model(backbone, pretrained=True, **kwargs)
    except Exception as exc:
        raise ConfigError(
            f"pretrained: true, but the weights of {backbone} can't be had "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); connect to the model hub once "
            "to fill the cache, give a local weights file path, or set pretrained: false"
        ) from None


def _check_weights_reachable(backbone: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes of retries, when timm's weights are neither cached nor reachable."""
    import timm
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm.models.get_arch_name(backbone) if "." not in backbone else backbone)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ConfigError(f"pretrained: timm has no pretrained weights for {backbone}; set pretrained: false "
                          "or give a weights file path")
    if cfg.file and Path(cfg.file).is_file():
        return
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        if any(isinstance(try_to_load_from_cache(repo, f), str)
               for f in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")):
            return
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    else:
        import torch.hub

        if (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name).is_file():
            return
        host = urlparse(cfg.url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(
            f"pretrained: true, but the weights of {backbone} are not cached and {host} can't be reached "
            f"({exc}); connect once to fill the cache, give a local weights file path, or set pretrained: false"
        ) from None


def check_pretrained(backbones: list[str], pretrained: list[bool | str]) -> None:
    """Fetch or load pretrained weights once on the driver so trials fail early, not one by one."""
    for b in backbones:
        for p in pretrained:
            if p is not False:
                create_model(b, p)
