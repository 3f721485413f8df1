"""Models: timm backbones with a new two-class head, and where their pretrained weights come from.

``factory`` builds a model for a trial's settings (optionally behind the SRM noise-residual input
of ``srm``); ``factory.resolve_weights`` finds the weights offline-first (a file, the local caches,
an installed weights package, then the hub).
"""

from ffdi_tune.models.factory import (
    Weights,
    check_backbone,
    check_weights,
    create_model,
    resolve_weights,
)
from ffdi_tune.models.srm import SrmInput

__all__ = [
    "Weights",
    "check_backbone",
    "check_weights",
    "create_model",
    "resolve_weights",
    "SrmInput",
]
