"""ffdi-tune: Ray Tune + Optuna + ASHA search and ensembling for image deepfake detection.

Seven subpackages, one per stage of a search, each importing only those below it (the contracts
in ``pyproject.toml``, checked by ``lint-imports``):

- ``search``: Ray Tune trials proposed by TPE and stopped by ASHA; the only user of Ray
- ``ensemble``: from the finished trials to the submission and its honest estimate
- ``tracking``: MLflow runs (parent, child per trial, ensemble); the only user of MLflow
- ``training``: one trial's training as a plain function
- ``scoring``: metrics and their directions, TTA views, inference, prediction
- ``models``: timm backbones and where their pretrained weights come from
- ``data``: the FFDI layout, the dataset check, the valset split, the decode cache, augmentation

On top: ``cli`` (parsing and one-line errors), ``config`` (the YAML assembled from each
subpackage's section, cross-checked and loaded) and ``report`` (figures); beneath everything:
``errors``, ``files``, ``strict`` and ``durations``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
