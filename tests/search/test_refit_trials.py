"""Refit through the real CLI: a search ships its members' refits, trained as Ray Tune trials on
trainset plus the selection part of valset, logged as child runs, scored on the report part."""

from __future__ import annotations

import contextlib
import json

import pandas as pd
import pytest
from helpers import runs_by_role, store_client, write_space

from ffdi_tune.cli import main
from ffdi_tune.data.holdout import split_valset
from ffdi_tune.data.layout import read_split
from ffdi_tune.data.settings import DataConfig

pytestmark = pytest.mark.slow

SPACE = """
name: refit
data:
  root: data
  demo: {n_train: 40, n_val: 24, n_test: 6, size: 32, seed: 2, difficulty: 0.2}
train: {backbone: test_resnet, img_size: 32, batch_size: 16, epochs: 2, ema_decay: 0.9}
space: {lr: {loguniform: [1.0e-3, 1.0e-2]}}
search: {num_samples: 2, max_concurrent: 2, seed: 0, default_trial: false}
scheduler: {type: fifo}
robust_val: {enabled: false}
tracking: {system_metrics: false}
ensemble: refit.yaml
"""
RECIPE = "top_k: 2\ncombine: mean\ntta: [identity, hflip]\nrefit: {seeds: 1}\n"


def test_a_search_ships_the_refits_of_its_members(tmp_path, monkeypatch, capsys):
    import ffdi_tune.search.refit_trials as refit

    write_space(tmp_path, SPACE)
    write_space(tmp_path, RECIPE, "refit.yaml")
    asked = []
    run_refits = refit.run_refits
    monkeypatch.setattr(
        refit,
        "run_refits",
        lambda cfg, jobs, names, *a, **k: (
            asked.append((jobs, names)) or run_refits(cfg, jobs, names, *a, **k)
        ),
    )
    with contextlib.chdir(tmp_path):
        assert main(["run", "space.yaml"]) == 0
    out = capsys.readouterr().out
    assert "refit: report-part AUC" in out and "with their refits" in out

    # each refit trains on trainset and the selection part, never the report part
    holdout = split_valset(read_split(DataConfig(root=str(tmp_path / "data")), "val"), 0.5, 0)
    recorded = json.loads((tmp_path / "runs" / "refit" / "holdout.json").read_text())
    assert recorded["report_hash"] == holdout.report_hash  # the search's own split
    jobs, names = asked[0]
    assert set(names) == set(holdout.select_names) and not set(names) & set(holdout.report_names)
    assert len(jobs) == 2 and len({j.settings["seed"] for j in jobs}) == 2
    assert {j.member for j in jobs} == {
        r.info.run_id for r in runs_by_role(store_client(tmp_path), "refit")["trial"]
    }
    for job in jobs:
        # the trial's own schedule (2 epochs), stopped at its best epoch
        assert job.kind in ("raw", "ema") and job.epochs in (1, 2) and job.settings["epochs"] == 2

    client = store_client(tmp_path)
    runs = runs_by_role(client, "refit")
    members = {r.info.run_id: r for r in runs["trial"]}
    refits = runs["refit"]
    assert len(refits) == 2 and all(r.info.status == "FINISHED" for r in refits)
    parent = runs["search"][0].info.run_id
    for r in refits:
        assert r.data.tags["mlflow.parentRunId"] == parent
        assert r.data.tags["ffdi.refit_of"] in members
        assert "checkpoint/best.pt" in {
            a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")
        }
    ensemble = runs["ensemble"][0]
    shipped = ensemble.data.params["members"].split(",")
    assert sorted(shipped) == sorted(r.info.run_id for r in refits)
    assert ensemble.data.params["refit_seeds"] == "1"
    metrics = ensemble.data.metrics
    assert 0 <= metrics["holdout_auc_before_refit"] <= 1 and 0 <= metrics["holdout_auc"] <= 1
    table = pd.read_csv(
        client.download_artifacts(ensemble.info.run_id, "members.csv", str(tmp_path))
    )
    assert table[table["shipped"]]["member"].tolist() == ["refit"]
    submission = pd.read_csv(tmp_path / "runs" / "refit" / "submission.csv")
    assert sorted(submission["img_name"]) == sorted(
        p.name for p in (tmp_path / "data" / "testset").iterdir()
    )
    assert submission["y_pred"].between(0, 1).all()


def test_a_spent_budget_skips_the_refit_and_ships_the_searchs_models():
    import time

    from ffdi_tune.config import parse_search_config
    from ffdi_tune.data.settings import DataConfig
    from ffdi_tune.search.refit_trials import run_refits

    cfg = parse_search_config({"name": "r", "data": {"root": "d"}})
    said = []
    done = run_refits(
        cfg, [], (), DataConfig(root="d"), None, "", "runs", deadline=time.time() - 1,
        echo=said.append,
    )  # fmt: skip
    assert done == {} and said == [
        "refit: skipped, the time budget has no time left for it; the search's models ship"
    ]
