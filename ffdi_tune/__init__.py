"""ffdi-tune: Ray Tune + Optuna + ASHA hyperparameter search and ensembling for image deepfake detection.

Modules, one stage each: ``config`` (YAML -> typed config), ``space`` (Optuna define-by-run),
``data`` / ``augment`` / ``demo_data`` (images in), ``models`` / ``train`` / ``metrics`` (one
trial, no Ray), ``search`` (Ray Tune, the only Ray import), ``tracking`` (MLflow, the only MLflow
import), ``results`` (trials table), ``cli`` (the ``ffdi-tune`` command).
"""

__version__ = "0.1.0"
