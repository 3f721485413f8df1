"""One run per search: a second run of a name is refused while the first holds the lock, and a
killed run's lock does not outlive it."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import hold_search_lock

from ffdi_tune.errors import SearchError
from ffdi_tune.search.lock import lock_path, search_lock


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
    out_dir = tmp_path / "runs" / "held"
    proc = hold_search_lock(out_dir)
    try:
        with pytest.raises(
            SearchError,
            match=rf"search 'held' is already running \(host .*, pid {proc.pid}, since ",
        ):
            with search_lock(out_dir, "held"):
                pass
        # another search's lock is another file
        with search_lock(tmp_path / "runs" / "other", "other"):
            pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup runs: the OS drops the lock
        proc.wait()
    with search_lock(out_dir, "held"):  # the killed run's --resume gets it
        assert lock_path(out_dir).exists()
    assert not out_dir.exists()  # the lock lives outside runs/


def test_run_refuses_a_search_another_run_holds_before_writing_anything(
    tmp_path, monkeypatch, capsys
):
    from ffdi_tune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(
        "name: busy\ndata: {root: data, demo: {n_train: 8, n_val: 8, n_test: 2, size: 32}}\n"
        "train: {backbone: test_resnet, img_size: 32, epochs: 1}\n"
        "search: {num_samples: 1, max_concurrent: 1}\n"
    )
    proc = hold_search_lock(tmp_path / "runs" / "busy")
    try:
        assert main(["run", "s.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: search 'busy' is already running") and "\n" not in err
        assert f"pid {proc.pid}" in err
        assert not (tmp_path / "data").exists() and not (tmp_path / "runs" / "busy").exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_search_kept_in_a_bucket_is_refused_while_another_machine_holds_its_lease(
    tmp_path, capsys, monkeypatch
):
    """Through the real CLI: the lease is read from the search's MLflow experiment before Ray or
    the bucket is touched, and a run refused leaves the lease as it was."""
    import json
    import time

    from mlflow.tracking import MlflowClient

    from ffdi_tune.cli import main
    from ffdi_tune.tracking import LEASE, Tracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = Tracker(uri).experiment_id("shared")
    foreign = {"holder": "x", "host": "gpu-node-7", "pid": 99, "renewed": time.time()}
    MlflowClient(uri).set_experiment_tag(exp, LEASE, json.dumps({**foreign, "stale_s": 120}))
    (tmp_path / "s.yaml").write_text(
        "name: shared\ndata: {root: data}\ntrain: {backbone: test_resnet}\n"
        "search: {storage: 's3://bucket/runs'}\ntracking: {uri: '" + uri + "'}\n"
    )
    assert main(["run", "s.yaml", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: search 'shared' is already running on another machine")
    assert "host gpu-node-7, pid 99" in err and "\n" not in err
    assert json.loads(MlflowClient(uri).get_experiment(exp).tags[LEASE])["host"] == "gpu-node-7"
    assert not (tmp_path / "data").exists()
