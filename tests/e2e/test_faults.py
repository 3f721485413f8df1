"""Faults caused for real: Ctrl-C, a killed driver, a killed trial worker, a tracking server that
goes away.

Each test runs `ffdi-tune run` in its own process (its own local Ray), breaks something mid-search,
and checks that every finished result is kept and the search completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import runs_by_role, store_client, write_space
from mlflow.tracking import MlflowClient
from procs import MlflowServer, TcpGate, spawn, stop_group

pytestmark = pytest.mark.slow

SPACE = """
name: {name}
data: {{root: data, demo: {{n_train: 600, n_val: 64, n_test: 4, size: 32, seed: 4}}}}
train: {{backbone: test_resnet, img_size: 32, batch_size: 16, epochs: {epochs}}}
space: {{lr: {{loguniform: [1.0e-3, 1.0e-2]}}}}
search: {{num_samples: {trials}, max_concurrent: 2, max_failures: 1, tpe_startup_trials: 2}}
scheduler: {{type: fifo}}
"""


def search_command(
    folder: Path, name: str, trials: int = 4, epochs: int = 4, uri: str | None = None
) -> list:
    """Write the search YAML in ``folder`` (MLflow at ``uri``, default the local store); the
    command line that runs it without a final stage. System metrics are off: what these tests
    follow is elsewhere, and each trial process saves the second MLflow's monitors take to load."""
    store = f"uri: '{uri}', " if uri else ""
    tracking = f"tracking: {{{store}system_metrics: false}}\n"
    write_space(folder, SPACE.format(name=name, trials=trials, epochs=epochs) + tracking)
    return [sys.executable, "-m", "ffdi_tune", "run", "space.yaml", "--no-ensemble"]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300, what: str = ""):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"ffdi-tune run ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def completeness_problems(
    client: MlflowClient, name: str, trials: int, epochs: int, folder: Path
) -> tuple[list[str], list]:
    """What breaks "every trial of Ray's results once in MLflow, FINISHED, with one val_auc per
    epoch and its checkpoint; any other run is one the killed driver had started but Ray had not
    saved yet: it ran no epoch and is closed as KILLED; nothing is left RUNNING", and the trial runs
    that Ray's results keep."""
    runs = runs_by_role(client, name)
    problems = []
    if [r.info.status for r in runs["search"]] != ["FINISHED"]:
        problems.append(f"search runs: {[r.info.status for r in runs['search']]}")
    df = pd.read_csv(folder / "runs" / name / "trials.csv")
    if len(df) != trials or set(df["status"]) != {"FINISHED"}:
        problems.append(f"trials.csv: {len(df)} rows, statuses {set(df['status'])}")
    ids = set(df["trial_id"].astype(str))
    kept = [r for r in runs["trial"] if r.data.tags["ffdi.trial_id"] in ids]
    if len(kept) != trials or {r.data.tags["ffdi.trial_id"] for r in kept} != ids:
        problems.append(f"{len(kept)} runs for the {len(ids)} trials of trials.csv")
    for run in runs["trial"]:
        if run not in kept and (run.info.status != "KILLED" or "val_auc" in run.data.metrics):
            problems.append(f"leftover run {run.info.run_id}: {run.info.status}")
    for run in kept:
        if run.info.status != "FINISHED":
            problems.append(
                f"{run.info.run_id}: {run.info.status} {run.data.tags.get('ffdi.error')}"
            )
        steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val_auc")})
        if steps != list(range(1, epochs + 1)):
            problems.append(f"{run.info.run_id}: val_auc at epochs {steps}")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        if "checkpoint/best.pt" not in artifacts:
            problems.append(f"{run.info.run_id}: no checkpoint/best.pt")
    return problems, kept


def test_ctrl_c_then_killed_driver_resumes_without_losing_or_repeating(tmp_path):
    """Ctrl-C stops cleanly; the resumed search, SIGKILLed mid-way, resumes again and finishes.

    Ctrl-C: exit 130, the last line says how to resume, the parent run is KILLED and no run is left
    RUNNING. SIGKILL: runs are left RUNNING; running again without --resume is refused; --resume
    finishes with the finished trials' runs and metrics untouched and no point proposed twice.
    """
    cmd = search_command(tmp_path, "killed", trials=4, epochs=3)
    client = store_client(tmp_path)
    proc = spawn(cmd, tmp_path)
    try:
        wait_for(
            lambda: list((tmp_path / "runs" / "killed").glob("*/checkpoint_*")),
            proc,
            what="a first checkpoint",
        )
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the driver
        _, err = proc.communicate(timeout=120)
    finally:
        stop_group(proc)
    assert proc.returncode == 130, err[-3000:]
    assert "--resume" in err.strip().splitlines()[-1]
    runs = runs_by_role(client, "killed")
    parents, children = runs["search"], runs["trial"]
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert children and all(r.info.status != "RUNNING" for r in children)

    proc = spawn(cmd + ["--resume"], tmp_path)
    try:

        def one_finished():
            children = runs_by_role(client, "killed")["trial"]
            done = [r for r in children if r.info.status == "FINISHED"]
            # A trial has finished and another has at least two of its three epochs to go, so the
            # kill surely leaves that one RUNNING.
            early = [
                r
                for r in children
                if r.info.status == "RUNNING"
                and max(
                    [m.step for m in client.get_metric_history(r.info.run_id, "val_auc")], default=0
                )
                <= 1
            ]
            return done if done and early else None

        finished = wait_for(one_finished, proc, what="a finished trial")
        before = {
            r.data.tags["ffdi.trial_id"]: (
                r.info.run_id,
                [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_auc")],
            )
            for r in finished
        }
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; its Ray processes notice on their own
        proc.wait(timeout=60)
    finally:
        stop_group(proc)  # whatever of that Ray is still around
    children = runs_by_role(client, "killed")["trial"]
    assert any(r.info.status == "RUNNING" for r in children)  # left behind by the killed driver

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.startswith(
        "error: search 'killed' already exists"
    )
    assert "--resume" in again.stderr

    done = subprocess.run(
        cmd + ["--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    problems, children = completeness_problems(
        client, "killed", trials=4, epochs=3, folder=tmp_path
    )
    assert not problems, problems
    by_trial = {r.data.tags["ffdi.trial_id"]: r for r in children}
    for trial_id, (run_id, history) in before.items():  # finished work kept as it was
        assert by_trial[trial_id].info.run_id == run_id
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_auc")] == history
    lrs = [float(r.data.params["lr"]) for r in children]
    assert len(set(lrs)) == 4  # the searcher continued instead of proposing its first points again
    # each trial trained with the seed its run records, also the ones continued after the kill
    for run in children:
        best = torch.load(
            client.download_artifacts(
                run.info.run_id, "checkpoint/best.pt", str(tmp_path / "seeds" / run.info.run_id)
            ),
            weights_only=True,
        )
        assert str(best["settings"]["seed"]) == run.data.params["seed"]
    assert len({r.data.params["seed"] for r in children}) == 4


def _trial_workers(marker: str) -> list[int]:
    """Pids of the Ray trial worker processes of the run whose environment carries ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "ImplicitFunc" in cmdline and marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path):
    cmd = search_command(tmp_path, "workerkill", trials=2, epochs=4)
    marker = f"FFDI_FAULT_TEST={uuid.uuid4().hex}"
    env = dict(os.environ, FFDI_FAULT_TEST=marker.split("=", 1)[1])
    client = store_client(tmp_path)
    proc = spawn(cmd, tmp_path, env)
    try:

        def reported_epoch():
            if not (tmp_path / "runs" / "mlflow.db").exists():
                return None
            children = runs_by_role(client, "workerkill")["trial"]
            running = [
                r for r in children if r.info.status == "RUNNING" and "val_auc" in r.data.metrics
            ]
            workers = _trial_workers(marker)
            return (running, workers) if running and workers else None

        _, workers = wait_for(reported_epoch, proc, what="a trial's first epoch")
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        stop_group(proc)
    assert proc.returncode == 0, err[-3000:]
    problems, _ = completeness_problems(client, "workerkill", trials=2, epochs=4, folder=tmp_path)
    assert not problems, problems


def test_tracking_server_outage_loses_nothing(tmp_path):
    """The tracking server becomes unreachable mid-search and answers again while trials still run:
    the search keeps its writes, notices the server is back, replays them, and ends complete."""
    server = MlflowServer(tmp_path / "server").start()
    gate = TcpGate(server.port).restore()  # the search's only way to the server
    cmd = search_command(tmp_path, "outage", trials=4, epochs=4, uri=gate.uri)
    client = MlflowClient(server.uri)
    spool = tmp_path / "runs" / "outage" / "mlflow-spool" / "entries.jsonl"
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    proc = spawn(cmd, tmp_path, env)
    try:
        wait_for(
            lambda: any(
                "val_auc" in r.data.metrics for r in runs_by_role(client, "outage")["trial"]
            ),
            proc,
            what="a first metric in MLflow",
        )
        gate.cut()
        wait_for(
            lambda: spool.is_file() and len(spool.read_text().splitlines()) >= 3,
            proc,
            what="writes kept during the outage",
        )
        assert proc.poll() is None  # trials still run: the search itself must notice the return
        gate.restore()
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "answers again" in err and "ffdi-tune sync" not in out
        assert not spool.exists()
        problems, _ = completeness_problems(client, "outage", trials=4, epochs=4, folder=tmp_path)
        assert not problems, problems
    finally:
        gate.close()
        stop_group(proc)
        server.stop()


def test_tracking_server_gone_for_good_then_sync(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    cmd = search_command(tmp_path, "gone", trials=2, epochs=2, uri=server.uri)
    client = MlflowClient(server.uri)
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    proc = spawn(cmd, tmp_path, env)
    try:
        wait_for(lambda: runs_by_role(client, "gone")["trial"], proc, what="a trial run in MLflow")
        server.stop()
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "ffdi-tune sync gone" in out and "nothing is lost" in out
        df = pd.read_csv(tmp_path / "runs" / "gone" / "trials.csv")  # Ray's results are intact
        assert len(df) == 2 and set(df["status"]) == {"FINISHED"}

        server.start()
        sync = subprocess.run(
            [sys.executable, "-m", "ffdi_tune", "sync", "gone"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sync.returncode == 0 and "replayed" in sync.stdout, sync.stderr
        problems, _ = completeness_problems(client, "gone", trials=2, epochs=2, folder=tmp_path)
        assert not problems, problems
    finally:
        stop_group(proc)
        server.stop()


def test_a_checkpoint_tune_deleted_before_the_driver_died_gets_its_successor_as_stand_in(tmp_path):
    """Registering checkpoint N deletes N-1 before the experiment state naming N is written: a
    driver killed in between leaves a state naming the deleted N-1. On resume each trial whose
    newest checkpoint lost its predecessor gets that predecessor back, as a copy of the newest;
    stand-ins no trial ended on are removed after the round."""
    from types import SimpleNamespace

    from ffdi_tune.search.rounds import remove_unused, stand_in_for_deleted_checkpoints
    from ffdi_tune.training.checkpoint import STAND_IN_FILE

    def trial(name: str, numbers: list[int]):
        for n in numbers:
            folder = tmp_path / name / f"checkpoint_{n:06d}"
            folder.mkdir(parents=True)
            (folder / "last.pt").write_text(f"{name} epoch {n + 1}")

    trial("a", [2])  # 1 deleted, state may still name it
    trial("b", [0])  # nothing before the first
    trial("c", [1, 2])  # both there
    made = stand_in_for_deleted_checkpoints(str(tmp_path))
    assert made == [tmp_path / "a" / "checkpoint_000001"]
    assert (made[0] / "last.pt").read_text() == "a epoch 3"  # the newest epoch, to continue from
    assert (made[0] / STAND_IN_FILE).read_text() == "checkpoint_000002"
    ended_on = SimpleNamespace(checkpoint=SimpleNamespace(path=str(made[0])))
    remove_unused(made, [ended_on])
    assert made[0].is_dir()  # a trial ended on it: kept
    remove_unused(made, [SimpleNamespace(checkpoint=None)])
    assert not made[0].exists()
