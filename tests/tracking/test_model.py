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
for paths in json.loads(sys.argv[3]):  # one call per list of paths, one line each
    print(json.dumps([float(p) for p in model.predict(pd.DataFrame({"path": paths}))]))
"""


def _predicted(uri: str, run: str, calls: list[list[str]]) -> list[np.ndarray]:
    """What the run's model predicts in a fresh process, one array per call."""
    threads = str(torch.get_num_threads())  # as many as the scoring it is compared with
    argv = [sys.executable, "-c", LOAD, uri, run, json.dumps(calls), threads]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return [np.array(json.loads(x)) for x in done.stdout.strip().splitlines()[-len(calls) :]]


def _final_stage_scores(members: list[dict], views: list[list[str]], test) -> np.ndarray:
    """The final stage's way: each member's views averaged in log-odds (members x images)."""
    scores = []
    for m, v in zip(members, views, strict=True):
        member = member_from_checkpoint(m["checkpoint_dict"], m["name"], torch.device("cpu"))
        scores.append(predict_views(member, load_images(test, member.img_size), v).mean(0))
    return np.stack(scores)


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
    scores = _final_stage_scores(members, views, test)
    expected = to_probability(SCALES["logit"][0](scores, np.array(weights)), "logit")
    (predicted,) = _predicted(uri, run, [[str(p) for p in test.paths]])
    assert np.array_equal(predicted, expected)
    logged = MlflowClient(uri).get_run(run)
    assert logged.info.status == "FINISHED"


def test_a_rank_ensemble_scores_one_image_as_it_scores_it_among_testset(tiny_data, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, (tmp_path / "artifacts").as_uri())
    members, views = [_member(tmp_path, 0), _member(tmp_path, 1)], [["identity"], ["hflip"]]
    test = read_split(DataConfig(root=str(tiny_data)), "test")
    scores = _final_stage_scores(members, views, test)
    spec = [
        {
            "name": m["name"],
            "checkpoint": m["checkpoint"],
            "views": v,
            "weight": 0.5,
            "reference": r,
        }
        for m, v, r in zip(members, views, scores, strict=True)
    ]
    model = {"members": spec, "scale": "rank", "example": [str(p) for p in test.paths[:2]]}
    run = tracker.ensemble_run(
        tracker.experiment_id("rank"), "ensemble-x", None, {}, {}, [], model=model
    )
    # the submission's ranks among testset, then the first and the last image alone
    paths = [str(p) for p in test.paths]
    together, first, last = _predicted(uri, run, [paths, paths[:1], paths[-1:]])
    assert np.array_equal(together, to_probability(SCALES["rank"][0](scores, None), "rank"))
    assert first[0] == together[0] and last[0] == together[-1]
    assert len(set(together)) > 2  # not a constant: within a call of one image it once was 0


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
