"""Models: timm backbones with a new two-class head, and where their pretrained weights come from.

``factory`` builds a model for a trial's settings (optionally behind the SRM noise-residual input
of ``srm``) and checks backbone names and settings before a search starts; ``weights`` finds the
pretrained weights offline-first through its registry of sources (a named file, the local caches,
an installed weights package, then the hub) and reads them under timm's names.
"""

from ffdi_tune.models.factory import check_backbone, check_weights, create_model
from ffdi_tune.models.srm import SrmInput
from ffdi_tune.models.weights import Weights, resolve_weights, weights_sources

__all__ = [
    "Weights",
    "check_backbone",
    "check_weights",
    "create_model",
    "resolve_weights",
    "weights_sources",
    "SrmInput",
]
