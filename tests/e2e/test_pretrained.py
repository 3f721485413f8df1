"""The shipped searches on pretrained weights, end to end: the demo fine-tunes lite0; missing or
wrong weights stop `ffdi-tune run` before Ray starts."""

from __future__ import annotations

import hashlib

import pytest
from helpers import REPO
from mlflow.tracking import MlflowClient

from ffdi_tune.cli import main
from ffdi_tune.models.weights import resolve_weights

pytestmark = pytest.mark.slow


def test_demo_search_fine_tunes_pretrained_lite0(
    tiny_data, tmp_path, monkeypatch, offline_home, capsys
):
    """search_spaces/demo.yaml as shipped, shrunk to one 1-epoch trial on tiny data."""
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "run",
                str(REPO / "search_spaces" / "demo.yaml"),
                "--data",
                str(tiny_data),
                "--name",
                "demo-smoke",
                "--num-samples",
                "1",
                "--epochs",
                "1",
                "--no-ensemble",
            ]
        )
        == 0
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    exp = client.get_experiment_by_name("demo-smoke")
    trials = client.search_runs([exp.experiment_id], "tags.`ffdi.role` = 'trial'")
    # the demo's time budget leaves time to spare: the trial is also trained further
    searched = [r for r in trials if "ffdi.continued_from" not in r.data.tags]
    assert len(searched) == 1 and {r.info.status for r in trials} == {"FINISHED"}
    tags, params = searched[0].data.tags, searched[0].data.params
    package = resolve_weights("tf_efficientnet_lite0", True)
    assert params["backbone"] == "tf_efficientnet_lite0" and params["pretrained"] == "True"
    assert tags["ffdi.weights_source"] == "package"
    assert (
        tags["ffdi.weights_sha256"] == hashlib.sha256(open(package.path, "rb").read()).hexdigest()
    )
    _soup_of_the_two(tmp_path, client, exp, len(trials), capsys)


def _soup_of_the_two(tmp_path, client, exp, trials, capsys):
    """Both trials fine-tuned the same lite0 weights: combine: soup tries their greedy soup and
    ships it (one model, with its ingredients and weights on the ensemble run) when it beats the
    better trial on the selection part, else that trial."""
    capsys.readouterr()
    (tmp_path / "soup.yaml").write_text("top_k: 1\ncombine: soup\ntta: [identity]\n")
    args = ["ensemble", "soup.yaml", "--experiment", "demo-smoke", "--out", "soup.csv"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "scored soup of 2 tf_efficientnet_lite0" in out or "no member improved" in out
    run = client.search_runs([exp.experiment_id], "tags.`ffdi.role` = 'ensemble'")[0]
    members = run.data.params["members"].split(",")
    assert trials == 2 and len(members) == 1 and (tmp_path / "soup.csv").is_file()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    if members[0].startswith("soup-"):
        assert len(run.data.params["soup_ingredients"].split(",")) == 2 and "soup.pt" in artifacts
    else:
        assert "soup_ingredients" not in run.data.params and "soup.pt" not in artifacts


def _refused(args, capsys, tmp_path) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "runs").exists()  # nothing written: no MLflow store, no Ray folder
    return err


def test_weights_nobody_has_stop_the_search_before_ray(
    tiny_data, tmp_path, monkeypatch, capsys, offline_home
):
    """efficientnet.yaml on a machine with no hub and no cache: its efficientnet_b0 is the first it
    can't get."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _refused(
        ["run", str(REPO / "search_spaces" / "efficientnet.yaml"), "--data", str(tiny_data)],
        capsys,
        tmp_path,
    )
    assert "no weights for efficientnet_b0 were found" in err and "HF_HUB_OFFLINE is set" in err


def test_another_architectures_file_stops_the_search(
    tiny_data, tmp_path, monkeypatch, capsys, offline_home
):
    lite1 = resolve_weights("tf_efficientnet_lite1", True).path
    (tmp_path / "space.yaml").write_text(
        f"name: wrong-file\ndata: {{root: {tiny_data}}}\ntrain: {{backbone: tf_efficientnet_lite0, "
        f"pretrained: {lite1}, img_size: 32, epochs: 1}}\n"
    )
    monkeypatch.chdir(tmp_path)
    err = _refused(["run", "space.yaml"], capsys, tmp_path)
    assert "into tf_efficientnet_lite0: it holds 386 tensors" in err
