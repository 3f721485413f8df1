"""A search on the robust metric with real Ray, Optuna, ASHA and MLflow, then a robust-ranked
ensemble."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from ffdi_tune.cli import main
from ffdi_tune.data.perturb import Perturber, RobustValConfig

pytestmark = pytest.mark.slow

SPACE = """
name: robust
data:
  root: data
  demo:
    {n_train: 32, n_val: 24, n_test: 6, size: 32, seed: 5, difficulty: 0.2, unseen_forgery: noise}
train: {backbone: test_resnet, img_size: 32, eval_img_size: 40, batch_size: 16, epochs: 2}
space:
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  input: {choice: [rgb, rgb+srm]}
  jpeg_quality: {choice: [[30, 60], [60, 95]]}
  augment: {choice: [flips, jpeg]}
search: {num_samples: 3, max_concurrent: 2, seed: 0, metric: val_worst_auc, tpe_startup_trials: 2}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
resources: {cpu: 1, gpu: 0}
robust_val:
  seed: 3
  ops_per_image: [1, 1]
  kinds: {blur: null, jpeg: {quality: [35, 45]}}
ensemble: worst.yaml
"""
WORST = "top_k: 2\ncombine: greedy\nmetric: val_worst_auc\ntta: [identity, hflip]\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    work = tmp_path_factory.mktemp("robust")
    (work / "space.yaml").write_text(SPACE)
    (work / "worst.yaml").write_text(WORST)
    with contextlib.chdir(work):
        assert main(["run", "space.yaml"]) == 0
    client = MlflowClient(f"sqlite:///{work}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("robust").experiment_id])
    return work, client, runs


def test_recipe_logged_and_three_metrics_per_epoch(finished):
    work, client, runs = finished
    parent = next(r for r in runs if r.data.tags.get("ffdi.role") == "search")
    logged = yaml.safe_load(
        open(client.download_artifacts(parent.info.run_id, "search_space.yaml", str(work)))
    )
    assert logged["robust_val"]["seed"] == 3 and logged["robust_val"]["kinds"]["blur"] is None
    assert logged["robust_val"]["kinds"]["jpeg"]["quality"] == [35, 45]
    trials = [r for r in runs if r.data.tags.get("ffdi.role") == "trial"]
    assert len(trials) == 3
    for run in trials:
        epochs = int(run.data.tags["ffdi.epochs_run"])
        for key in ("val_auc", "val_robust_auc", "val_worst_auc"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        worst = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_worst_auc")
        }
        ckpt = torch.load(
            client.download_artifacts(
                run.info.run_id, "checkpoint/best.pt", str(work / run.info.run_id)
            ),
            weights_only=True,
        )
        # best.pt is the epoch best on the search metric, and records the settings prediction needs
        assert (
            ckpt["metrics"]["val_worst_auc"] == max(worst.values())
            and ckpt["metric"] == "val_worst_auc"
        )
        assert ckpt["eval_img_size"] == 40 and ckpt["img_size"] == 32
        assert ckpt["input"] == run.data.params["input"] and run.data.params["jpeg_quality"] in (
            "(30, 60)",
            "(60, 95)",
        )
    df = pd.read_csv(work / "runs" / "robust" / "trials.csv")
    assert "best_val_worst_auc" in df.columns


def test_ensemble_ranks_on_the_logged_perturbation(finished):
    work, client, runs = finished
    ens = next(r for r in runs if r.data.tags.get("ffdi.role") == "ensemble")
    assert ens.data.params["metric"] == "val_worst_auc"
    used = RobustValConfig.model_validate_json(ens.data.params["robust_val"])
    assert used.seed == 3 and used.kinds.blur is None  # the search's recipe, not the default
    assert (
        Perturber(used).key
        == Perturber(
            RobustValConfig(
                seed=3, ops_per_image=(1, 1), kinds={"blur": None, "jpeg": {"quality": [35, 45]}}
            )
        ).key
    )
    assert {"holdout_robust_auc", "holdout_worst_auc"} <= set(ens.data.metrics)
    members = pd.read_csv(client.download_artifacts(ens.info.run_id, "members.csv", str(work)))
    assert {"select_robust_auc", "holdout_robust_auc"} <= set(members.columns)
