"""The tracker: its writes survive a tracking-server outage (kept in a local spool, replayed in
order), and a pickled copy of it carries on where it was."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from procs import MlflowServer, free_port

from ffdi_tune.tracking import Spool, Tracker, replay_spool, unreachable


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module; a test that stops it starts it again."""
    # A refused connection fails at once instead of after MLflow's own retries (this process and
    # the `sync` subprocesses): the outage handling is what is under test.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        srv = MlflowServer(tmp_path_factory.mktemp("server")).start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.mark.slow  # an mlflow server
def test_refused_requests_are_not_mistaken_for_an_outage(server, tmp_path):
    tracker = Tracker(server.uri, spool_dir=tmp_path / "spool")
    exp = tracker.experiment_id("refused")
    with pytest.raises(Exception) as info:
        tracker.log_metrics("0" * 32, {"val_auc": 0.5}, step=1)  # no such run: a bug, not an outage
    assert not unreachable(info.value) and tracker.pending() == 0
    assert exp


@pytest.mark.slow  # an mlflow server
def test_outage_is_spooled_then_replayed_in_order(server, tmp_path):
    spool = tmp_path / "spool"
    tracker = Tracker(server.uri, spool_dir=spool)
    tracker.writes.probe_s = 0.0
    exp = tracker.experiment_id("outage")
    parent = tracker.search_run(exp, "outage", False, "name: outage\n", str(tmp_path))
    before = tracker.trial_run(exp, parent, "t1", {"lr": 0.1})
    tracker.log_metrics(before, {"val_auc": 0.5}, step=1)

    server.stop()
    # run created during the outage: a placeholder id that later writes use
    during = tracker.trial_run(exp, parent, "t2", {"lr": 0.2})
    assert during.startswith("pending:")
    tracker.log_metrics(before, {"val_auc": 0.6}, step=2)
    tracker.log_metrics(during, {"val_auc": 0.7}, step=1)
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    tracker.log_artifact(during, ckpt, "checkpoint")
    ckpt.unlink()  # the original is gone (Ray keeps one checkpoint): the spool has its own copy
    tracker.set_tags(during, {"ffdi.stopped_early": "false"})
    tracker.finish(during)
    tracker.finish(before)
    assert tracker.pending() == 7

    server.start()
    tracker.finish(parent)  # the first write after the outage replays the kept ones first
    assert tracker.pending() == 0 and not spool.exists()

    client = MlflowClient(server.uri)
    children = {
        r.data.tags["ffdi.trial_id"]: r
        for r in client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    }
    assert set(children) == {"t1", "t2"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert client.get_run(parent).info.status == "FINISHED"
    t1, t2 = children["t1"].info.run_id, children["t2"].info.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(t1, "val_auc")] == [
        (1, 0.5),
        (2, 0.6),
    ]
    assert (
        children["t2"].data.params == {"lr": "0.2"}
        and children["t2"].data.tags["ffdi.stopped_early"] == "false"
    )
    local = client.download_artifacts(t2, "checkpoint/best.pt", str(tmp_path))
    assert open(local, "rb").read() == b"weights"


@pytest.mark.slow  # an mlflow server
def test_sync_replays_from_a_fresh_process(server, tmp_path):
    spool = tmp_path / "runs" / "later" / "mlflow-spool"
    tracker = Tracker(server.uri, spool_dir=spool)
    exp = tracker.experiment_id("later")
    parent = tracker.search_run(exp, "later", False, "name: later\n", str(tmp_path))
    server.stop()
    run = tracker.trial_run(exp, parent, "t1", {"lr": 0.1})
    tracker.log_metrics(run, {"val_auc": 0.8}, step=1)
    tracker.finish(run)
    tracker.finish(parent)
    assert tracker.pending() == 4

    # still down: one line, exit 2, nothing lost
    cmd = [sys.executable, "-m", "ffdi_tune", "sync", "later"]
    down = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (
        down.returncode == 2
        and down.stderr.startswith("error: MLflow at")
        and "sync again" in down.stderr
    )
    assert Tracker(server.uri, spool_dir=spool).pending() == 4

    server.start()
    up = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0 and "4 kept tracking write(s) replayed" in up.stdout, up.stderr
    client = MlflowClient(server.uri)
    child = client.search_runs([exp], filter_string="tags.`ffdi.trial_id` = 't1'")[0]
    assert child.info.status == "FINISHED" and child.data.metrics["val_auc"] == 0.8
    assert client.get_run(parent).info.status == "FINISHED"
    assert replay_spool(spool) == 0  # nothing left


def test_a_refused_write_is_set_aside_and_the_rest_replayed(tmp_path):
    """A kept write the store refuses (its run was deleted meanwhile) must not block the others."""
    uri, artifacts = f"sqlite:///{tmp_path}/mlflow.db", (tmp_path / "artifacts").as_uri()
    tracker = Tracker(uri, artifacts, spool_dir=tmp_path / "spool")
    exp = tracker.experiment_id("refusals")
    parent = tracker.search_run(exp, "refusals", False, "name: refusals\n", str(tmp_path))
    spool = Spool(tmp_path / "spool")
    store = {"uri": uri, "artifact_location": artifacts}
    spool.append(
        {"op": "metrics", "run": "f" * 32, "metrics": {"val_auc": 0.1}, "step": 1, "time": 1}, store
    )
    spool.append({"op": "tags", "run": parent, "tags": {"after": "yes"}}, store)
    assert tracker.replay() and tracker.pending() == 0
    assert MlflowClient(uri).get_run(parent).data.tags["after"] == "yes"
    rejected = (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1 and '"run": "' + "f" * 32 in rejected[0]


def test_a_pickled_tracker_finds_its_runs_again_and_keeps_writing(tmp_path):
    """Tune pickles the callbacks that hold a tracker: the copy connects again on first use and
    resolves the trial runs the original made."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, (tmp_path / "artifacts").as_uri(), spool_dir=tmp_path / "spool")
    exp = tracker.experiment_id("pickled")
    parent = tracker.search_run(exp, "pickled", False, "name: pickled\n", str(tmp_path))
    run = tracker.trial_run(exp, parent, "t1", {"lr": 0.1})
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy.resolve(f"pending:{exp}:{parent}:t1") == run
    copy.log_metrics(run, {"val_auc": 0.7}, step=1)
    copy.finish(run)
    assert copy.pending() == 0 and copy.metric_values(run, "val_auc") == [0.7]
    assert MlflowClient(uri).get_run(run).info.status == "FINISHED"


def test_writes_to_an_unreachable_store_are_spooled_and_so_are_a_pickled_copys(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, no retries
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker = Tracker(uri, spool_dir=tmp_path / "spool")
    run = tracker.trial_run("1", "p" * 32, "t1", {"lr": 0.1})
    assert run == f"pending:1:{'p' * 32}:t1" and tracker.resolve(run) == ""
    tracker.log_metrics(run, {"val_auc": 0.5}, step=1)
    copy = pickle.loads(pickle.dumps(tracker))
    copy.finish(run)
    assert copy.pending() == tracker.pending() == 3
    assert [e["op"] for e in Spool(tmp_path / "spool").entries()] == [
        "trial_run",
        "metrics",
        "finish",
    ]
    assert Spool(tmp_path / "spool").store() == {"uri": uri, "artifact_location": None}
