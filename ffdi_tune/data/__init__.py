"""Data: the FFDI layout on disk and everything between a JPEG and a batch.

Label files and folders are read and checked (``layout``, ``check``), decoded once per node into a
cache (``cache``, ``passes``), split into the selection and report parts of valset (``holdout``),
augmented (``augment``) or perturbed like a re-upload (``perturb``); ``demo`` writes the generated
portrait dataset and ``settings`` is the ``data:`` section of a search space. Nothing here knows
about models, Ray or MLflow.
"""

from ffdi_tune.data.augment import augment_names, build_augment
from ffdi_tune.data.check import DataCheck, check_dataset
from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.holdout import Holdout, split_valset
from ffdi_tune.data.layout import Split, ensure_dataset, load_images, read_split
from ffdi_tune.data.perturb import Perturber, RobustValConfig
from ffdi_tune.data.settings import DataConfig, DemoSpec

__all__ = [
    "DataConfig",
    "DemoSpec",
    "Split",
    "read_split",
    "load_images",
    "ensure_dataset",
    "DataCheck",
    "check_dataset",
    "Holdout",
    "split_valset",
    "augment_names",
    "build_augment",
    "Perturber",
    "RobustValConfig",
    "write_demo_dataset",
]
