"""Data: the FFDI layout on disk and everything between a JPEG and a batch.

Label files and folders are read and images decoded (``layout``) after a one-pass check of the whole
dataset (``check``); decoded images are cached once per node (``cache``, with ``passes`` spreading
the work over the CPUs) and batched for training and prediction (``loaders``); valset is split into
its selection and report parts (``holdout``); images are augmented (``augment``, a registry of
named sets) or perturbed like a re-upload (``perturb``); ``demo`` writes the generated portrait
dataset and ``settings`` is the ``data:`` section of a search space. Nothing here knows about
models, Ray or MLflow.
"""

from ffdi_tune.data.augment import augment_names, build_augment
from ffdi_tune.data.check import DataCheck, check_dataset
from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.holdout import Holdout, split_valset
from ffdi_tune.data.layout import Split, ensure_dataset, load_images, read_split
from ffdi_tune.data.loaders import eval_loader, to_model_input, train_batches
from ffdi_tune.data.perturb import Perturber, RobustValConfig
from ffdi_tune.data.settings import DataConfig, DemoSpec

__all__ = [
    "DataConfig",
    "DemoSpec",
    "Split",
    "read_split",
    "load_images",
    "ensure_dataset",
    "train_batches",
    "eval_loader",
    "to_model_input",
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
