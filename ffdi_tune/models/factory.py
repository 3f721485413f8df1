"""timm backbones: name checks and building a trial's model, with a new two-class head.

:func:`create_model` builds a timm classifier with two outputs (0 = real, 1 = fake) from random
initialisation or pretrained weights (found by :func:`~ffdi_tune.models.weights.resolve_weights`),
behind the input an ``input`` mode asks for (:data:`INPUT_MODES`). :func:`check_backbone` and
:func:`check_weights` let a search refuse a bad name, a file of another architecture or a setting a
backbone does not take before any trial starts.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ffdi_tune.errors import ConfigError, did_you_mean
from ffdi_tune.models.weights import Weights, pretrained_state_dict, resolve_weights

__all__ = [
    "INPUT_MODES",
    "check_backbone",
    "check_weights",
    "create_model",
]


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


def _timm_model(
    backbone: str, weights: Weights, drop_rate: float, drop_path_rate: float | None
) -> torch.nn.Module:
    """The timm model with a new 2-class head, loaded with ``weights`` unless they are none."""
    import timm

    overlay = None
    if weights.source != "none":
        # timm drops the 1000-class head (2 classes here) and adapts what its checkpoint filter
        # knows how to adapt
        overlay = {"state_dict": pretrained_state_dict(backbone, weights)}
    try:
        return timm.create_model(
            backbone,
            pretrained=overlay is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=2,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,  # None leaves the architecture's default
        )
    except TypeError as exc:  # a keyword the architecture does not take
        raise ConfigError(
            f"{backbone} cannot be built with these settings ({exc}); drop drop_path_rate for it "
            "(per_backbone) or pick another backbone"
        ) from None
    except RuntimeError as exc:
        raise ConfigError(
            f"pretrained: cannot load {weights.source} weights {weights.detail} into {backbone}: "
            f"{str(exc).splitlines()[0][:300]}; give weights of this architecture"
        ) from None


def _srm_input(model: torch.nn.Module) -> torch.nn.Module:
    from ffdi_tune.models.srm import SrmInput

    return SrmInput(model)


# What the model sees besides RGB: setting ``input`` -> wrapper around the timm backbone.
INPUT_MODES = {
    "rgb": lambda model: model,
    # SRM noise residuals through a learned 6->3 adapter (ffdi_tune.models.srm)
    "rgb+srm": _srm_input,
}


def create_model(
    backbone: str,
    pretrained: bool | str | Weights = False,
    drop_rate: float = 0.0,
    input_mode: str = "rgb",
    drop_path_rate: float | None = None,
) -> torch.nn.Module:
    """A timm classifier with two outputs (0 = real, 1 = fake).

    ``pretrained`` is False, True (resolved by :func:`~ffdi_tune.models.weights.resolve_weights`),
    a weights file path (``.pth``/``.pt``/``.bin``/``.safetensors``, read with ``weights_only``
    semantics) or resolved :class:`~ffdi_tune.models.weights.Weights`; the 1000-class head is
    replaced by a new 2-class one. ``input_mode`` is a key of :data:`INPUT_MODES` (``rgb+srm`` puts
    :class:`~ffdi_tune.models.srm.SrmInput` in front).

    >>> create_model("resnet10t").num_classes
    2
    """
    if input_mode not in INPUT_MODES:
        raise ConfigError(
            f"input: unknown input mode {input_mode!r}{did_you_mean(input_mode, INPUT_MODES)}; "
            f"valid modes are {', '.join(INPUT_MODES)}"
        )
    weights = resolve_weights(backbone, pretrained)
    return INPUT_MODES[input_mode](_timm_model(backbone, weights, drop_rate, drop_path_rate))


def check_weights(
    choices: dict[str, list[bool | str]],
    drop_path_rates: dict[str, list[float | None]] | None = None,
    echo=print,
) -> dict[tuple[str, bool | str], Weights]:
    """Resolve and load every (backbone, pretrained) pair a search can draw, before any trial.

    ``choices`` maps each backbone to the ``pretrained`` values it can get, ``drop_path_rates`` to
    the ``drop_path_rate`` values it can get (default: none set). Each pair's weights are loaded
    into the model once (so a wrong file fails here, not in a trial) and echoed; every backbone is
    also built with each of its ``drop_path_rate`` values (on the meta device: no memory).
    """
    import timm

    resolved = {}
    for backbone, values in choices.items():
        for rate in (drop_path_rates or {}).get(backbone, [None]):
            try:
                with torch.device("meta"):
                    timm.create_model(backbone, num_classes=2, drop_path_rate=rate)
            except TypeError as exc:
                raise ConfigError(
                    f"drop_path_rate: {backbone} does not take it ({exc}); leave drop_path_rate "
                    "unset for this backbone (per_backbone) or pick another backbone"
                ) from None
        for value in dict.fromkeys(values):
            weights = resolve_weights(backbone, value)
            if weights.source != "none":
                _timm_model(backbone, weights, 0.0, None)
                echo(f"weights: {backbone} from {weights.describe()}")
            resolved[(backbone, value)] = weights
    return resolved
