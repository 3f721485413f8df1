"""End to end: `ffdi-tune run` with real local Ray, Optuna, ASHA and a sqlite MLflow store."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import run_cli, runs_by_role, store_client
from mlflow.tracking import MlflowClient
from procs import free_port, stop_group

from ffdi_tune.cli import main
from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.holdout import report_hash, split_valset
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.methods import COMBINATIONS
from ffdi_tune.tracking import Tracker

pytestmark = pytest.mark.slow

SPACE = """
name: e2e
data:
  root: data
  demo: {n_train: 48, n_val: 24, n_test: 8, size: 32, seed: 1, difficulty: 0.2}
  on_bad_image: skip
train: {backbone: resnet10t, img_size: 32, batch_size: 16, epochs: 2, device_augment: on}
space:
  backbone: {choice: [resnet10t, mobilenetv3_small_050]}
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  gamma: {uniform: [0.5, 0.9]}
  augment: {choice: [none, flips, color, photometric]}
per_backbone:
  mobilenetv3_small_050: {lr: {loguniform: [1.0e-3, 3.0e-3]}}
search: {num_samples: 4, max_concurrent: 2, seed: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
resources: {cpu: 1, gpu: auto}
ensemble: top3.yaml
"""
TOP3 = "top_k: 3\ntta: [identity, hflip]\n"  # combine: auto
LOAD_MODEL = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
predicted = model.predict(pd.DataFrame({"path": json.loads(sys.argv[3])}))
print(json.dumps([float(p) for p in predicted]))
"""
RANK = "top_k: 5\ncombine: rank\ntta: [identity, hflip, vflip]\n"


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    work = tmp_path_factory.mktemp("search")
    (work / "space.yaml").write_text(SPACE)
    (work / "top3.yaml").write_text(TOP3)
    (work / "rank.yaml").write_text(RANK)

    data = write_demo_dataset(
        work / "data", n_train=48, n_val=24, n_test=8, size=32, seed=1, difficulty=0.2
    )
    victim = sorted((data / "trainset").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: left out (on_bad_image: skip)

    with contextlib.chdir(work):
        assert main(["run", "space.yaml"]) == 0
    return work


def client_and_runs(work):
    client = store_client(work)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    return client, exp, runs


def test_mlflow_parent_and_children(finished_search):
    client, exp, _ = client_and_runs(finished_search)
    runs = runs_by_role(client, "e2e")
    parents, children = runs["search"], runs["trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {
        "search_space.yaml",
        "trials.csv",
        "search_history.png",
        "param_importance.png",
        "skipped_images.csv",
    } <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert exp.artifact_location.startswith("file://") and exp.artifact_location.endswith(
        "runs/mlartifacts"
    )
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view
    # the runs table's Dataset column: trainset and the selection part, on the search and trials
    for run in [parent, *children]:
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"trainset", "valset-selection"}
        assert '"num_rows": 12' in inputs["valset-selection"].dataset.profile  # half of 24
        assert {t.value for t in inputs["trainset"].tags} == {"training"}
    tags = parent.data.tags  # what reproducing the search needs
    assert (
        tags["ffdi.version.torch"] == torch.__version__.split("+")[0] and tags["ffdi.version.ray"]
    )
    assert all(len(tags[f"ffdi.data_fingerprint.{s}"]) == 16 for s in ("train", "val", "test"))
    assert tags["ffdi.on_bad_image"] == "skip" and tags["ffdi.skipped_images"] == "1"
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"  # ASHA-stopped trials are FINISHED too
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags["ffdi.trial_id"]
        assert tags["ffdi.stopped_early"] in ("true", "false")
        epochs = int(tags["ffdi.epochs_run"])
        assert (tags["ffdi.stopped_early"] == "true") == (epochs < 2)
        # fixed and sampled settings as params
        assert (
            params["img_size"] == "32"
            and params["epochs"] == "2"
            and params["backbone"] in ("resnet10t", "mobilenetv3_small_050")
        )
        assert 1e-3 <= float(params["lr"]) <= 1e-2 and 0.5 <= float(params["gamma"]) <= 0.9
        history = client.get_metric_history(run.info.run_id, "val_auc")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        for key in (
            "val_tpr_at_fpr_0.001",
            "val_acc",
            "val_loss",
            "train_loss",
            "lr",
            "epoch_time_s",
            "train_images_per_s",
            "eval_time_s",
            # the machine, sampled where the trial ran (MLflow's names: its System metrics tab)
            "system/cpu_utilization_percentage",
            "system/system_memory_usage_megabytes",
        ):
            assert key in run.data.metrics
        # is the device fed? per epoch
        waits = client.get_metric_history(run.info.run_id, "data_wait_share")
        assert sorted(m.step for m in waits) == list(range(1, epochs + 1)) and all(
            0 < m.value < 1 for m in waits
        )
        local = client.download_artifacts(
            run.info.run_id, "checkpoint/best.pt", str(finished_search / run.info.run_id)
        )
        ckpt = torch.load(local, weights_only=True)
        assert ckpt["backbone"] == params["backbone"] and ckpt["metrics"]["val_auc"] == max(
            m.value for m in history
        )
    # device_augment: on runs these sets' batched (kornia) forms inside the Ray trials; flips are
    # drawn while a batch is gathered (CPU trials)
    where = {r.data.params["augment"]: r.data.tags["ffdi.augment_on"] for r in children}
    assert {"color", "photometric"} & set(where)
    assert all(
        on == ("device" if aug in ("color", "photometric") else "gather")
        for aug, on in where.items()
    )


def assert_submission(path, data_root):
    df = pd.read_csv(path)
    names = sorted(p.name for p in (data_root / "testset").iterdir())
    assert list(df.columns) == ["img_name", "y_pred"]
    assert list(df["img_name"]) == names
    assert df["y_pred"].notna().all() and df["y_pred"].nunique() > 1  # scores, not a constant


def test_run_ends_with_ensemble(finished_search):
    client, exp, runs = client_and_runs(finished_search)
    assert_submission(finished_search / "runs" / "e2e" / "submission.csv", finished_search / "data")
    parent = next(r for r in runs if r.data.tags.get("ffdi.role") == "search")
    # the run's own final stage (other tests add ensembles of their own, without a parent)
    ens = [
        r
        for r in runs
        if r.data.tags.get("ffdi.role") == "ensemble"
        and r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert len(ens) == 1 and ens[0].info.status == "FINISHED"
    run = ens[0]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert {
        "holdout_auc",
        "select_auc",
        "holdout_tpr_at_fpr_0.001",
        "best_member_select_auc",
        "best_member_holdout_auc",
        "holdout_auc_ci_low",
        "holdout_auc_ci_high",
    } <= set(run.data.metrics)
    m = run.data.metrics
    assert m["holdout_auc_ci_low"] <= m["holdout_auc"] <= m["holdout_auc_ci_high"]
    assert (
        run.data.params["combine"] == "auto"
        and run.data.tags["ffdi.combine_chosen"] in COMBINATIONS
    )
    # the final stage scored the search's own split
    assert (
        run.data.tags["ffdi.holdout.report_hash"]
        == parent.data.tags["ffdi.holdout.report_hash"]
        != "none"
    )
    assert all(
        v in ("identity", "identity+hflip") for v in run.data.params["member_views"].split(",")
    )
    assert {"submission.csv", "members.csv", "roc.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    members = pd.read_csv(
        client.download_artifacts(run.info.run_id, "members.csv", str(finished_search))
    )
    kinds = list(members["kind"])
    # the members, then a weight soup per backbone where one beat its best member, then every
    # combination
    assert kinds[:4] == ["member"] * 4 and kinds[-len(COMBINATIONS) :] == ["ensemble"] * len(
        COMBINATIONS
    )
    assert set(kinds[4 : -len(COMBINATIONS)]) <= {"soup"}
    assert (members["holdout_note"].str.startswith("not for choosing") == ~members["shipped"]).all()
    assert members.loc[members["kind"] != "ensemble", "weight"].sum() == pytest.approx(1.0)
    shipped = members[members["shipped"]]
    assert len(shipped) == 1 and shipped["member"].iloc[0] == run.data.tags["ffdi.combine_chosen"]
    combos = members[members["kind"] == "ensemble"]
    # auto: the best on selection
    assert shipped["select_auc_tta"].iloc[0] == combos["select_auc_tta"].max()
    assert run.data.metrics["select_auc"] >= run.data.metrics["best_member_select_auc"]
    assert len(run.data.params["members"].split(",")) == run.data.metrics["n_members"]


def test_report_part_is_fixed_before_the_search_and_never_read_by_it(finished_search):
    """The split is recorded on the search run; trials scored only the selection part, each with its
    own seed."""
    client, _, runs = client_and_runs(finished_search)
    parent = next(r for r in runs if r.data.tags.get("ffdi.role") == "search")
    val = read_split(DataConfig(root=str(finished_search / "data")), "val")
    holdout = split_valset(val, 0.5, 0)
    assert (
        parent.data.tags["ffdi.holdout.fraction"] == "0.5"
        and parent.data.tags["ffdi.holdout.seed"] == "0"
    )
    assert parent.data.tags["ffdi.holdout.report_hash"] == holdout.report_hash
    assert (
        json.loads((finished_search / "runs" / "e2e" / "holdout.json").read_text())["report_hash"]
        == holdout.report_hash
    )
    trials = [r for r in runs if r.data.tags.get("ffdi.role") == "trial"]
    assert (
        {r.data.params["val_images"] for r in trials} == {str(len(holdout.select_names))} == {"12"}
    )
    assert len({r.data.params["seed"] for r in trials}) == len(trials)  # diverse members
    # what the trials decoded of valset (the per-node cache records each entry's images): the
    # selection part
    decoded = [
        json.loads(p.read_text())
        for p in Path(os.environ["FFDI_TUNE_CACHE"]).glob("*.json")
        if not p.name.startswith("scan-")
    ]
    ours = str((finished_search / "data" / "valset").resolve())
    val_entries = [e for e in decoded if e["first"].startswith(ours) and e["images"] != len(val)]
    assert val_entries and all(e["images"] == len(holdout.select_names) for e in val_entries)
    for run in trials:  # every epoch's metrics were computed on those images alone
        ckpt = torch.load(
            client.download_artifacts(
                run.info.run_id,
                "checkpoint/best.pt",
                str(finished_search / f"split-{run.info.run_id}"),
            ),
            weights_only=True,
        )
        assert ckpt["metrics"]["val_auc"] == pytest.approx(
            _selection_auc(ckpt, finished_search, holdout)
        )


def _selection_auc(ckpt, root, holdout):
    from ffdi_tune.models.factory import create_model
    from ffdi_tune.scoring.inference import view_log_odds
    from ffdi_tune.scoring.metrics import roc_auc

    model = create_model(ckpt["backbone"])
    model.load_state_dict(ckpt["state_dict"])
    val = read_split(DataConfig(root=str(root / "data")), "val").only(holdout.select_names)
    score = view_log_odds(
        model,
        load_images(val, ckpt["eval_img_size"]),
        torch.tensor(ckpt["mean"]),
        torch.tensor(ckpt["std"]),
        ["identity"],
    )[0]
    return roc_auc(val.targets, score)


def test_ensemble_and_predict_from_the_store_alone(finished_search, tmp_path):
    """A fresh process that knows only the tracking store rebuilds an ensemble, another recipe."""
    env_cwd = finished_search
    out = tmp_path / "rank.csv"
    # 4 finished trials for top_k 5: the ensemble is built from those, says so and ships
    proc = run_cli(env_cwd, "ensemble", "rank.yaml", "--experiment", "e2e", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "only 4 finished trial(s) qualify for top_k=5" in proc.stdout
    assert_submission(out, finished_search / "data")
    short = [
        r
        for r in runs_by_role(store_client(finished_search), "e2e")["ensemble"]
        if r.data.params["recipe"] == "rank.yaml"
    ]
    assert [r.data.tags["ffdi.members_short"] for r in short] == ["4 of 5"]
    assert short[0].data.params["top_k"] == "4"
    out.unlink()
    (finished_search / "rank3.yaml").write_text(RANK.replace("top_k: 5", "top_k: 3"))
    proc = run_cli(
        env_cwd, "ensemble", "rank3.yaml", "--experiment", "e2e", "--out", str(out),
        "--register", "e2e-rank",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_submission(out, finished_search / "data")
    assert "registered: model 'e2e-rank' version 1" in proc.stdout
    # the registered model, loaded in a fresh process, scores the test files as the submission did
    submission = pd.read_csv(out)
    paths = [str(finished_search / "data" / "testset" / n) for n in submission["img_name"]]
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_MODEL, f"sqlite:///{finished_search}/runs/mlflow.db",
         "models:/e2e-rank/1", json.dumps(paths)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    predicted = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert predicted == submission["y_pred"].tolist()
    client, _, runs = client_and_runs(finished_search)
    rank_runs = [
        r
        for r in runs
        if r.data.tags.get("ffdi.role") == "ensemble" and r.data.params["combine"] == "rank"
    ]
    assert len(rank_runs) >= 1 and "mlflow.parentRunId" not in rank_runs[0].data.tags
    trial = next(r for r in runs if r.data.tags.get("ffdi.role") == "trial")
    pred = tmp_path / "one.csv"
    proc = run_cli(
        env_cwd,
        "predict",
        "--run",
        trial.info.run_id,
        "--data",
        str(finished_search / "data"),
        "--tta",
        "identity,hflip",
        "--out",
        str(pred),
    )
    assert proc.returncode == 0, proc.stderr
    assert_submission(pred, finished_search / "data")


def test_ensemble_input_errors(finished_search, capsys, monkeypatch):
    monkeypatch.chdir(finished_search)
    assert main(["ensemble", "top3.yaml", "--experiment", "e2x", "--out", "x.csv"]) == 2
    assert "experiment 'e2x' not found" in capsys.readouterr().err
    (finished_search / "bad.yaml").write_text("top_k: 3\ntta: [identity, hflp]\n")
    assert main(["ensemble", "bad.yaml", "--experiment", "e2e", "--out", "x.csv"]) == 2
    assert "unknown TTA view 'hflp'" in capsys.readouterr().err
    # zero qualifying trials is the final stage's only "too few" error
    (finished_search / "none.yaml").write_text("top_k: 1\ncandidates: {min_epochs: 99}\n")
    assert main(["ensemble", "none.yaml", "--experiment", "e2e", "--out", "x.csv"]) == 2
    assert (
        "no finished trials in e2e pass the recipe's candidates filter" in capsys.readouterr().err
    )
    assert not (finished_search / "x.csv").exists()


def test_final_stage_scores_only_its_pool_chosen_on_the_logged_metric(
    finished_search, monkeypatch, capsys, tmp_path
):
    """candidates.pool: only the trials with the best logged val_auc (best epoch, selection part)
    are scored; the others never reach the member table."""
    monkeypatch.chdir(finished_search)
    (finished_search / "pool2.yaml").write_text("top_k: 1\ncandidates: {pool: 2}\n")
    assert main(["ensemble", "pool2.yaml", "--experiment", "e2e", "--out", "pool2.csv"]) == 0
    assert "scoring the best 2 of 4 qualifying trials" in capsys.readouterr().out
    client, _, runs = client_and_runs(finished_search)
    trials = [r for r in runs if r.data.tags.get("ffdi.role") == "trial"]
    best = {
        r.info.run_id: max(m.value for m in client.get_metric_history(r.info.run_id, "val_auc"))
        for r in trials
    }
    ensemble = max(
        (r for r in runs if r.data.params.get("recipe") == "pool2.yaml"),
        key=lambda r: r.info.start_time,
    )
    table = pd.read_csv(
        client.download_artifacts(ensemble.info.run_id, "members.csv", str(tmp_path))
    )
    scored = set(table.loc[table["kind"] == "member", "member"])
    # the default recipe is always scored; the rest of the pool is the best by logged val_auc
    (default,) = [r.info.run_id for r in trials if r.data.tags.get("ffdi.default_recipe")]
    chosen = scored - {default}
    assert len(scored) == 2 and default in scored
    assert min(best[m] for m in chosen) >= max(
        v for m, v in best.items() if m not in scored and m != default
    )  # ties on a 12-image selection part may go either way
    (finished_search / "pool0.yaml").write_text("top_k: 3\ncandidates: {pool: 2}\n")
    assert main(["ensemble", "pool0.yaml", "--experiment", "e2e", "--out", "x.csv"]) == 2
    assert "candidates.pool=2 is smaller than top_k=3" in capsys.readouterr().err


def test_pooled_ensemble_of_two_searches(finished_search, monkeypatch, capsys):
    monkeypatch.chdir(finished_search)
    assert (
        main(
            [
                "run",
                "space.yaml",
                "--name",
                "e2e-b",
                "--num-samples",
                "2",
                "--epochs",
                "1",
                "--no-ensemble",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "ensemble",
                "rank.yaml",
                "--experiment",
                "e2e",
                "--experiment",
                "e2e-b",
                "--out",
                "pooled.csv",
            ]
        )
        == 0
    )
    assert_submission(finished_search / "pooled.csv", finished_search / "data")
    client = MlflowClient(f"sqlite:///{finished_search}/runs/mlflow.db")
    exp = client.get_experiment_by_name("e2e")
    pooled = [
        r
        for r in client.search_runs([exp.experiment_id], "tags.`ffdi.role` = 'ensemble'")
        if r.data.params["experiments"] == "e2e,e2e-b"
    ]
    assert len(pooled) == 1 and len(pooled[0].data.params["members"].split(",")) == 5
    # a search that kept another part of valset aside cannot be pooled: its report part is e2e's
    # selection part
    (finished_search / "space_c.yaml").write_text(
        SPACE.replace("seed: 0}", "seed: 0, holdout: {seed: 1}}")
    )
    assert (
        main(
            [
                "run",
                "space_c.yaml",
                "--name",
                "e2e-c",
                "--num-samples",
                "1",
                "--epochs",
                "1",
                "--no-ensemble",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "ensemble",
                "rank.yaml",
                "--experiment",
                "e2e",
                "--experiment",
                "e2e-c",
                "--out",
                "mixed.csv",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "searches 'e2e' and 'e2e-c' split valset differently" in err and "\n" not in err
    assert not (finished_search / "mixed.csv").exists()


def test_no_run_left_running(finished_search):
    _, _, runs = client_and_runs(finished_search)
    assert all(r.info.status != "RUNNING" for r in runs)


def test_trials_csv_ranked(finished_search):
    client, _, runs = client_and_runs(finished_search)
    df = pd.read_csv(finished_search / "runs" / "e2e" / "trials.csv")
    assert len(df) == 4 and list(df["rank"]) == [1, 2, 3, 4]
    assert {
        "trial_id",
        "mlflow_run_id",
        "best_val_auc",
        "epochs_run",
        "status",
        "backbone",
        "lr",
    } <= set(df.columns)
    assert df["best_val_auc"].is_monotonic_decreasing
    child_ids = {r.info.run_id for r in runs if r.data.tags.get("ffdi.role") == "trial"}
    assert set(df["mlflow_run_id"]) == child_ids
    assert set(df["status"]) <= {"FINISHED", "STOPPED"}


def test_the_optuna_study_is_kept_beside_the_search(finished_search):
    """optuna.db holds what TPE was told: each trial's best epoch (finished) or its epochs so far
    (pruned, stopped by ASHA), for optuna-dashboard."""
    import optuna

    path = finished_search / "runs" / "e2e" / "optuna.db"
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{path}")
    df = pd.read_csv(finished_search / "runs" / "e2e" / "trials.csv")
    assert len(study.trials) == 4 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    finished = sorted(t.value for t in study.trials if t.state.name == "COMPLETE")
    assert finished == sorted(df.loc[df["status"] == "FINISHED", "best_val_auc"])
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert len(pruned) == (df["status"] == "STOPPED").sum()
    assert all(t.intermediate_values for t in study.trials)


def test_existing_name_needs_resume(finished_search, capsys, monkeypatch):
    monkeypatch.chdir(finished_search)
    assert main(["run", "space.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: search 'e2e' already exists") and "--resume" in err


def test_resume_of_finished_search_adds_no_runs_and_keeps_its_split(
    finished_search, monkeypatch, capsys
):
    monkeypatch.chdir(finished_search)

    def search_and_trials():
        return {
            r.info.run_id
            for r in client_and_runs(finished_search)[2]
            if r.data.tags["ffdi.role"] != "ensemble"
        }

    before = search_and_trials()
    kept = (finished_search / "runs" / "e2e" / "holdout.json").read_text()
    # the YAML now asks for another split: a resume keeps the one the trials were chosen on
    (finished_search / "space_moved.yaml").write_text(
        SPACE.replace("seed: 0}", "seed: 0, holdout: {seed: 9}}")
    )
    capsys.readouterr()
    assert main(["run", "space_moved.yaml", "--resume", "--no-ensemble"]) == 0
    assert (
        "--resume keeps the valset split the search started with (fraction 0.5, seed 0)"
        in capsys.readouterr().out
    )
    after = client_and_runs(finished_search)[2]
    assert search_and_trials() == before
    assert all(r.info.status == "FINISHED" for r in after)
    assert (finished_search / "runs" / "e2e" / "holdout.json").read_text() == kept
    parent = next(r for r in after if r.data.tags.get("ffdi.role") == "search")
    assert parent.data.tags["ffdi.holdout.seed"] == "0"
    # resumed where holdout.json is not (another machine, with bucket storage): the parent run's
    # tags say which split it was
    (finished_search / "runs" / "e2e" / "holdout.json").unlink()
    assert main(["run", "space_moved.yaml", "--resume", "--no-ensemble"]) == 0
    assert "(fraction 0.5, seed 0)" in capsys.readouterr().out
    assert (finished_search / "runs" / "e2e" / "holdout.json").read_text() == kept
    # ...and where neither holdout.json nor the store it logged to is at hand, it refuses to guess
    (finished_search / "runs" / "e2e" / "holdout.json").unlink()
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{finished_search}/another.db")
        assert main(["run", "space_moved.yaml", "--resume", "--no-ensemble"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume: search 'e2e' has no holdout.json") and "\n" not in err
    assert not (finished_search / "runs" / "e2e" / "holdout.json").exists()
    (finished_search / "runs" / "e2e" / "holdout.json").write_text(kept)


def test_fraction_zero_says_there_is_no_honest_estimate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(
        SMALL.replace("max_concurrent: 1}", "max_concurrent: 1, holdout: {fraction: 0}}")
        + "ensemble: one.yaml\n"
    )
    (tmp_path / "one.yaml").write_text("top_k: 1\n")
    assert main(["run", "space.yaml"]) == 0
    out = capsys.readouterr().out
    assert (
        "no honest estimate: search.holdout.fraction is 0" in out and "report-part AUC" not in out
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    exp = client.get_experiment_by_name("small")
    (trial,) = client.search_runs([exp.experiment_id], "tags.`ffdi.role` = 'trial'")
    assert trial.data.params["val_images"] == "16"  # all of valset chose
    (ensemble,) = client.search_runs([exp.experiment_id], "tags.`ffdi.role` = 'ensemble'")
    assert (
        "holdout_auc" not in ensemble.data.metrics
        and ensemble.data.tags["ffdi.holdout.report_hash"] == "none"
    )


def test_ui_serves_the_store(finished_search, tmp_path):
    """With another ``mlflow`` first on PATH (one that fails), the UI is still the environment's."""
    port = free_port()
    decoy = tmp_path / "bin" / "mlflow"
    decoy.parent.mkdir()
    decoy.write_text("#!/bin/sh\nexit 3\n")
    decoy.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ffdi_tune", "ui", "--port", str(port)],
        cwd=finished_search,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, PATH=f"{decoy.parent}:{os.environ['PATH']}"),
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=e2e"
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body = json.load(resp)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        assert body["experiment"]["name"] == "e2e"
    finally:
        stop_group(proc)


FAILING = """
name: diverges
data: {root: data, demo: {n_train: 16, n_val: 8, n_test: 2, size: 32, seed: 2}}
train: {backbone: resnet10t, img_size: 32, batch_size: 8, epochs: 1, optimizer: sgd, lr: 1.0e+8}
space: {gamma: {uniform: [0.5, 0.9]}}
search: {num_samples: 2, max_concurrent: 2, max_failures: 1}
tracking: {system_metrics: false}
"""


def test_crashing_trials_are_retried_then_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(FAILING)
    # every trial failed: exit 1, the errors summarised, no final stage and no submission
    assert main(["run", "space.yaml"]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "ensemble stage" not in captured.out
    assert "every trial failed (2), so there is nothing to ensemble" in captured.err
    assert "2 x FloatingPointError" in captured.err and "lower lr" in captured.err
    assert not (tmp_path / "runs" / "diverges" / "submission.csv").exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    exp = client.get_experiment_by_name("diverges")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("ffdi.role") == "trial"]
    assert len(children) == 2  # a retry reuses its trial's run
    for run in children:
        assert run.info.status == "FAILED"
        assert (
            run.data.tags["ffdi.error"].startswith("FloatingPointError")
            and "lower lr" in run.data.tags["ffdi.error"]
        )
    parent = next(r for r in runs if r.data.tags.get("ffdi.role") == "search")
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_failed"] == 2
    df = pd.read_csv(tmp_path / "runs" / "diverges" / "trials.csv")
    assert list(df["status"]) == ["FAILED", "FAILED"]


def test_resources_beyond_the_cluster_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(
        FAILING.replace("name: diverges", "name: greedy") + "resources: {cpu: 64, gpu: 0}\n"
    )
    assert main(["run", "space.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: resources: a trial asks for 64 CPU, but the Ray cluster has")
        and "\n" not in err
    )
    assert (
        not (tmp_path / "runs" / "mlflow.db").exists()
        and not (tmp_path / "runs" / "greedy").exists()
    )


def test_ensemble_needs_only_val_and_test(finished_search, tmp_path):
    """Another machine with the tracking store and only valset/testset can rebuild a submission."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(finished_search / "data" / "valset", data / "valset")
    shutil.copytree(finished_search / "data" / "testset", data / "testset")
    shutil.copy(finished_search / "data" / "valset_label.txt", data)
    out = tmp_path / "sub.csv"
    proc = run_cli(
        finished_search,
        "ensemble",
        "top3.yaml",
        "--experiment",
        "e2e",
        "--data",
        str(data),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert_submission(out, data)


def test_ensemble_refuses_changed_data(tmp_path, monkeypatch, capsys):
    """A test image rewritten in place (old size and mtime put back), a changed valset: refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SMALL)
    (tmp_path / "one.yaml").write_text("top_k: 1\n")
    assert main(["run", "space.yaml", "--no-ensemble"]) == 0
    capsys.readouterr()  # the search's own output (Ray may forward a worker's exit message late)
    victim = sorted((tmp_path / "data" / "testset").iterdir())[0]
    st = victim.stat()
    # the same bytes, rewritten: its inode change time moves
    victim.write_bytes(victim.read_bytes())
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main(["ensemble", "one.yaml", "--experiment", "small", "--out", "changed.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: testset in ")
        and "changed since search 'small' ran" in err
        and "\n" not in err
    )
    assert "--allow-changed-data" in err and not (tmp_path / "changed.csv").exists()
    assert (
        main(
            [
                "ensemble",
                "one.yaml",
                "--experiment",
                "small",
                "--out",
                "changed.csv",
                "--allow-changed-data",
            ]
        )
        == 0
    )
    # a copy elsewhere (not fingerprinted: another root) whose valset lost an image: not the same
    # split
    import shutil

    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    copied = tmp_path / "copy" / "valset_label.txt"
    copied.write_text("\n".join(copied.read_text().splitlines()[:-1]) + "\n")
    assert (
        main(
            ["ensemble", "one.yaml", "--experiment", "small", "--data", "copy", "--out", "copy.csv"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        "valset's report part is not the one search 'small' kept aside" in err and "\n" not in err
    )
    # the same in place
    labels = tmp_path / "data" / "valset_label.txt"
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(rows[:-1]) + "\n")
    assert (
        main(
            [
                "ensemble",
                "one.yaml",
                "--experiment",
                "small",
                "--out",
                "changed2.csv",
                "--allow-changed-data",
            ]
        )
        == 0
    )  # allowed on purpose
    # scored on the report images the search recorded that are still there, nothing else
    out = capsys.readouterr().out
    recorded = Tracker(f"sqlite:///{tmp_path}/runs/mlflow.db").search_report_names("small")
    present = set(pd.read_csv(labels)["img_name"])
    still = sorted(set(recorded) & present)
    gone = len(recorded) - len(still)
    assert (
        f"report part is the {len(still)} recorded report images still present ({gone} gone)" in out
    )
    ensembles = runs_by_role(store_client(tmp_path), "small")["ensemble"]
    latest = max(ensembles, key=lambda r: r.info.start_time)
    assert latest.data.tags["ffdi.holdout.report_hash"] == report_hash(still)
    assert main(["ensemble", "one.yaml", "--experiment", "small", "--out", "changed2.csv"]) == 2
    assert "changed since search 'small' ran" in capsys.readouterr().err


SMALL = """
name: small
data: {root: data, demo: {n_train: 16, n_val: 16, n_test: 4, size: 32, seed: 4, difficulty: 0.2}}
train: {backbone: test_resnet, img_size: 32, batch_size: 8, epochs: 1}
search: {num_samples: 1, max_concurrent: 1}
tracking: {system_metrics: false}
"""
