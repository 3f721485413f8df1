"""The shipped ensemble as an MLflow pyfunc model: logged on a run, loaded in a fresh process, it
scores image files as the final stage scored them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from mlflow import MlflowClient

from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.models.factory import create_model
from ffdi_tune.scoring.combine import SCALES, to_probability
from ffdi_tune.scoring.predict import member_from_checkpoint, predict_views
from ffdi_tune.tracking import Tracker

LOAD = """
import json, sys
import mlflow, pandas as pd, torch
torch.set_num_threads(int(sys.argv[4]))  # as many as the scoring it is compared with
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(f"runs:/{sys.argv[2]}/model")
paths = json.loads(sys.argv[3])
print(json.dumps([float(p) for p in model.predict(pd.DataFrame({"path": paths}))]))
"""


def _member(tmp_path, seed: int) -> dict:
    torch.manual_seed(seed)
    checkpoint = {
        "state_dict": create_model("test_resnet").state_dict(),
        "backbone": "test_resnet",
        "input": "rgb",
        "img_size": 32,
        "eval_img_size": 32 + 8 * seed,  # members fed at their own sizes
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    path = tmp_path / f"m{seed}.pt"
    torch.save(checkpoint, path)
    return {"name": f"m{seed}", "checkpoint": path, "checkpoint_dict": checkpoint}


def test_a_logged_ensemble_scores_files_in_a_fresh_process_as_the_final_stage_did(
    tiny_data, tmp_path
):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("model")
    members = [_member(tmp_path, 0), _member(tmp_path, 1)]
    views = [["identity", "hflip"], ["identity"]]
    weights = [0.7, 0.3]
    spec = [
        {"name": m["name"], "checkpoint": m["checkpoint"], "views": v, "weight": w}
        for m, v, w in zip(members, views, weights, strict=True)
    ]
    test = read_split(DataConfig(root=str(tiny_data)), "test")
    model = {"members": spec, "scale": "logit", "example": [str(p) for p in test.paths[:2]]}
    run = tracker.ensemble_run(exp, "ensemble-x", None, {}, {}, [], model=model)
    # the final stage's way: each member's views averaged in log-odds, then the weighted scale
    scores = []
    for m, v in zip(members, views, strict=True):
        member = member_from_checkpoint(m["checkpoint_dict"], m["name"], torch.device("cpu"))
        scores.append(predict_views(member, load_images(test, member.img_size), v).mean(0))
    expected = to_probability(SCALES["logit"][0](np.stack(scores), np.array(weights)), "logit")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD,
            uri,
            run,
            json.dumps([str(p) for p in test.paths]),
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    predicted = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    assert np.array_equal(predicted, expected)
    logged = MlflowClient(uri).get_run(run)
    assert logged.info.status == "FINISHED"


def test_a_model_that_cannot_be_logged_costs_neither_the_run_nor_the_submission(
    tmp_path, monkeypatch, caplog
):
    import ffdi_tune.tracking.model as model_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model_module, "log_ensemble_model", broken)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("broken")
    model = {"members": [], "scale": "logit", "example": []}
    run = tracker.ensemble_run(
        exp, "ensemble-x", None, {"top_k": 1}, {"select_auc": 0.7}, [], model=model
    )
    logged = MlflowClient(uri).get_run(run)
    assert logged.info.status == "FINISHED" and logged.data.metrics["select_auc"] == 0.7
    assert "the ensemble's MLflow model was not logged (RuntimeError: out of memory)" in caplog.text
