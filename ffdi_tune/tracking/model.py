"""The shipped ensemble as an MLflow pyfunc model: ``mlflow.pyfunc.load_model`` and ``mlflow models
serve`` score new images with it.

The model's artifacts are its members' ``best.pt`` files (a weight soup's averaged weights count as
one member) and ``ensemble.json``: each member's TTA views and weight, and the scale the weights
average on. :meth:`EnsembleModel.predict` takes a DataFrame with a ``path`` column of image files
and returns each image's probability of fake, decoded and scored exactly as the final stage scored
testset (each member at its own size and normalisation, every view from one decode). A ``rank``
ensemble also keeps each member's testset log-odds (``references.npz``): an image's score is the
weighted mean of its places among them, so it does not depend on the other images of the call
(one image scores as it would among many), and on testset it is the submission's.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from ffdi_tune.data.layout import Split, load_images
from ffdi_tune.scoring.combine import SCALES, rank_average, to_probability
from ffdi_tune.scoring.predict import default_device, member_from_checkpoint, predict_views

__all__ = ["EnsembleModel", "SPEC_FILE", "log_ensemble_model", "register_ensemble_model"]

SPEC_FILE = "ensemble.json"
REFERENCES_FILE = "references.npz"  # a rank model's: member index -> its testset log-odds
MODEL_NAME = "model"  # the model's folder on the ensemble run: runs:/<run id>/model


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """The shipped ensemble: its members, their views and weights, one scale."""

    def load_context(self, context) -> None:
        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        device = default_device()
        self.scale = spec["scale"]
        self.members = []
        for i, member in enumerate(spec["members"]):
            checkpoint = torch.load(
                context.artifacts[f"member{i}"], map_location="cpu", weights_only=True
            )
            loaded = member_from_checkpoint(checkpoint, member["name"], device)
            self.members.append((loaded, member["views"], float(member["weight"])))
        self.references = None
        if "references" in context.artifacts:
            with np.load(context.artifacts["references"]) as kept:
                self.references = [kept[str(i)] for i in range(len(self.members))]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        paths = tuple(Path(p) for p in model_input["path"])
        split = Split("predict", tuple(str(p) for p in paths), paths, None)
        scores = []
        for member, views, _ in self.members:
            images = load_images(split, member.decode_size, resize=member.resize)
            scores.append(predict_views(member, images, views).mean(axis=0))
        weights = np.array([w for _, _, w in self.members])
        if self.scale == "rank":
            combined = rank_average(np.stack(scores), weights, self.references)
        else:
            combined = SCALES[self.scale][0](np.stack(scores), weights)
        return to_probability(combined, self.scale)


def log_ensemble_model(
    run_id: str, tracking_uri: str, members: list[dict], scale: str, example: list[str]
) -> None:
    """Log the ensemble as the pyfunc model ``model`` of run ``run_id``: ``members`` are
    ``{"name", "checkpoint" (a best.pt path), "views", "weight"}`` and, on the ``rank`` scale,
    ``"reference"`` (its testset log-odds); ``example`` image paths make its input example."""
    from mlflow.models import infer_signature

    spec = {
        "scale": scale,
        "members": [{k: m[k] for k in ("name", "views", "weight")} for m in members],
    }
    with _tracking(tracking_uri), _spec_files(spec, members) as files:
        artifacts = {name: str(path) for name, path in files.items()}
        artifacts |= {f"member{i}": str(m["checkpoint"]) for i, m in enumerate(members)}
        example_input = pd.DataFrame({"path": [str(p) for p in example]})
        signature = infer_signature(example_input, np.zeros(len(example)))
        with mlflow.start_run(run_id=run_id):
            mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=EnsembleModel(),
                artifacts=artifacts,
                signature=signature,
                input_example=example_input,
                pip_requirements=_requirements(),
                code_paths=[str(Path(__file__).resolve().parents[1])],  # ffdi_tune travels with it
            )


def register_ensemble_model(tracking_uri: str, run_id: str, name: str) -> str:
    """Register the ensemble run's model in the Model Registry as ``name``; its new version."""
    with _tracking(tracking_uri):
        return str(mlflow.register_model(f"runs:/{run_id}/{MODEL_NAME}", name).version)


_REQUIRED = ("torch", "torchvision", "timm", "pillow", "numpy", "pandas", "scipy", "scikit-learn")


def _requirements() -> list[str]:
    """The packages the model's code imports, pinned to this environment's versions."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for package in (*_REQUIRED, "mlflow"):
        try:
            pinned.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(package)
    return pinned


@contextmanager
def _tracking(uri: str):
    """MLflow's fluent API pointed at ``uri`` for the block, and everything put back after: its
    global URI (unset, when it was) and ``MLFLOW_TRACKING_URI``, which setting a URI also sets;
    MLflow's own warnings about how the model is saved are kept off the output."""
    from mlflow.tracking._tracking_service import utils  # MLflow's "this URI for a block"

    env = os.environ.get("MLFLOW_TRACKING_URI")
    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with utils._use_tracking_uri(uri):
            yield
    finally:
        quiet.setLevel(level)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


@contextmanager
def _spec_files(spec: dict, members: list[dict]):
    """``ensemble.json`` and, when members carry references, ``references.npz``, in a temporary
    folder: artifact name -> path."""
    with tempfile.TemporaryDirectory(prefix="ffdi-model-") as tmp:
        files = {"spec": Path(tmp) / SPEC_FILE}
        files["spec"].write_text(json.dumps(spec, indent=1))
        if any("reference" in m for m in members):
            files["references"] = Path(tmp) / REFERENCES_FILE
            np.savez(files["references"], **{str(i): m["reference"] for i, m in enumerate(members)})
        yield files
