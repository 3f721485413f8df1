"""Beyond one machine: `ffdi-tune run` on a real two-node Ray cluster with a real MLflow server.

Both nodes run on this machine (started with `ray start`, each its own raylet and worker pool; the
second joins the first over TCP) and share its filesystem, which stands in for the shared storage
a real cluster needs. Everything the tests start lives in a private Ray temp folder (RAY_TMPDIR),
with a private token, and is stopped by process id when the test ends, failed or not.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import runs_by_role, write_space
from mlflow.tracking import MlflowClient
from procs import MlflowServer, free_port

from ffdi_tune.config import SearchConfig
from ffdi_tune.search.cluster import ray_address
from ffdi_tune.search.runner import experiment_path, search_dir

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a `ray start` daemonises, but its processes keep the
    session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid and int(entry) != os.getpid():
                    with open(f"/proc/{entry}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(int(entry))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return pids


def stop_session(sid: int, grace_s: float = 3.0) -> None:
    """SIGTERM every process of session ``sid``, then SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while session_pids(sid) and time.time() < deadline:
            time.sleep(0.2)
        if not session_pids(sid):
            return
    raise RuntimeError(f"processes of session {sid} survived SIGKILL: {session_pids(sid)}")


@dataclass
class Node:
    sid: int  # session of its `ray start`: every process of the node
    node_id: str = ""

    def raylet_pid(self) -> int:
        for pid in session_pids(self.sid):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[0].endswith(b"/raylet"):
                    return pid
        raise RuntimeError(f"no raylet in session {self.sid}")


class Cluster:
    """A head and worker nodes started with `ray start` in a private temp folder."""

    def __init__(self, env: dict[str, str]):
        # short: unix socket paths <= 107 chars
        self.tmp = tempfile.mkdtemp(prefix="ffdi-ray-", dir="/tmp")
        self.port = free_port()
        # `auto` below must find this cluster
        env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
        self.env = dict(
            env,
            RAY_TMPDIR=self.tmp,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(16),
            RAY_USAGE_STATS_ENABLED="0",
            # a killed node is declared dead after ~3 s instead of ~15 s
            RAY_health_check_period_ms="1000",
            RAY_health_check_failure_threshold="3",
        )
        self.nodes: list[Node] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_node(
        self, head: bool = False, prefix: list[str] = (), env: dict[str, str] | None = None
    ) -> Node:
        """Start a node (``prefix`` runs before `ray start`; ``env`` adds to its environment, which
        its workers inherit)."""
        common = [
            "--num-cpus",
            "1",
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(100 * 2**20),
            "--disable-usage-stats",
        ]
        if head:
            args = [
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--include-dashboard",
                "false",
            ]
        else:
            args = ["--address", self.address]
        proc = subprocess.Popen(
            [*prefix, RAY, "start", *args, *common],
            env=dict(self.env, **(env or {})),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        node = Node(proc.pid)
        self.nodes.append(node)  # stopped at teardown even if it did not come up
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        known = {n.node_id for n in self.nodes}
        for _ in range(60):
            fresh = [n for n in self.alive() if n["NodeID"] not in known]
            if fresh:
                node.node_id = fresh[0]["NodeID"]
                return node
            time.sleep(1)
        raise RuntimeError("the new node did not join the cluster")

    def query(self) -> dict:
        """Alive nodes and the process ids of every driver that ever joined, asked from a separate
        driver (this test process never joins Ray)."""
        code = (
            "import json, ray; from ray._private.state import jobs; "
            "ray.init(address='auto', logging_level='ERROR'); "
            "print(json.dumps({'nodes': [n for n in ray.nodes() if n['Alive']], "
            "'driver_pids': [j['DriverPid'] for j in jobs()]}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def alive(self) -> list[dict]:
        return self.query()["nodes"]

    def wait_alive(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.time() + timeout_s
        while len(self.alive()) != count:
            assert time.time() < deadline, f"cluster did not reach {count} alive node(s)"
            time.sleep(1)

    def stop(self) -> None:
        survivors = []
        for node in reversed(self.nodes):  # every node, even when one of them resists
            try:
                stop_session(node.sid)
            except RuntimeError as exc:
                survivors.append(str(exc))
        shutil.rmtree(self.tmp, ignore_errors=True)
        assert not survivors, survivors


@pytest.fixture
def make_cluster(_private_cache):
    """Factory of two-node clusters; each is stopped by process id when the test ends."""
    made: list[Cluster] = []

    def make() -> Cluster:
        # nodes' workers inherit the cache folder
        cluster = Cluster(dict(os.environ, OMP_NUM_THREADS="1"))
        made.append(cluster)
        cluster.start_node(head=True)
        cluster.start_node()
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster(_private_cache, tmp_path_factory):
    """Two nodes, each with its own decode cache folder (``Cluster.caches``), as separate machines
    have."""
    made = Cluster(dict(os.environ, OMP_NUM_THREADS="1"))
    made.caches = [tmp_path_factory.mktemp("head-cache"), tmp_path_factory.mktemp("worker-cache")]
    try:
        made.start_node(head=True, env={"FFDI_TUNE_CACHE": str(made.caches[0])})
        made.start_node(env={"FFDI_TUNE_CACHE": str(made.caches[1])})
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port: sqlite backend, artifacts proxied by the
    server (clients upload and download over HTTP, as a machine without the server's disk must)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start(timeout=120)
    try:
        yield server.uri
    finally:
        server.stop()


SPACE = """
name: {name}
data: {data}
train: {{backbone: test_resnet, img_size: 32, batch_size: 16, epochs: {epochs}}}
space:
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
  augment: {{choice: [none, flips]}}
search: {{num_samples: {samples}, max_concurrent: 2, seed: 0, max_failures: 2, storage: {storage},
         reuse_actors: false}}
scheduler: {{type: {scheduler}, grace_period: 1, reduction_factor: 2}}
resources: {{cpu: {cpu}, gpu: 0}}
tracking: {{uri: {uri}, system_metrics: false}}
"""


def cluster_space(
    folder: Path,
    data: Path | str,
    uri: str,
    name: str,
    samples: int = 4,
    epochs: int = 2,
    scheduler: str = "asha",
    cpu: float = 1,
) -> Path:
    """A search YAML in ``folder``; ``data`` is a data root, or a YAML mapping for the data section.

    Each trial gets its own worker process (no actor reuse): the first two trials then hold one CPU
    on each node at once, whereas a reused worker could take every trial when trials are shorter
    than starting a second worker.
    """
    return write_space(
        folder,
        SPACE.format(
            name=name,
            data=data if isinstance(data, str) else f"{{root: {data}}}",
            uri=uri,
            samples=samples,
            epochs=epochs,
            storage=folder / "shared-storage",
            scheduler=scheduler,
            cpu=cpu,
        ),
    )


def ffdi(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """`ffdi-tune ARGS` in a fresh process group, whose leftovers are stopped afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ffdi_tune", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_session(proc.pid)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid
    return done


@pytest.mark.slow
def test_search_spreads_over_nodes_and_lands_in_the_server(
    cluster, mlflow_server, tiny_data, tmp_path
):
    space = cluster_space(tmp_path / "driver", tiny_data, mlflow_server, "spread", samples=2)
    (tmp_path / "driver" / "top2.yaml").write_text(
        "top_k: 2\ncombine: mean\ntta: [identity, hflip]\n"
    )
    proc = ffdi(
        ["run", str(space), "--address", "auto", "--no-ensemble"], tmp_path / "driver", cluster.env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.pid in cluster.query()["driver_pids"]  # `auto` joined the cluster
    # Each node built its own decode cache before the first trial, not the driver for them all:
    # trainset and the selection half of valset, its perturbed copy too (robust_val is on).
    assert "decode cache: checking and building on 2 node(s)" in proc.stdout
    for cache in cluster.caches:
        assert len(list(cache.glob("*.npy"))) == 3, sorted(p.name for p in cache.iterdir())

    client = MlflowClient(mlflow_server)
    children = runs_by_role(client, "spread")["trial"]
    assert len(children) == 2
    experiment = client.get_experiment_by_name("spread")
    # through the server, not its disk
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    [parent] = client.search_runs([experiment.experiment_id], "tags.`ffdi.role` = 'search'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == 2
    # Two one-CPU nodes and two trials at a time: both nodes must have run trials.
    assert {r.data.tags["ffdi.node_id"] for r in children} == {n.node_id for n in cluster.nodes}
    for run in children:
        assert run.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == [
            "checkpoint/best.pt"
        ]
    # Ray's state went to the configured storage; the trials table stays with the driver.
    assert (tmp_path / "driver" / "shared-storage" / "spread").is_dir()
    assert len(pd.read_csv(tmp_path / "driver" / "shared-storage" / "spread" / "trials.csv")) == 2

    # Another process, elsewhere, that knows only the server's URI rebuilds an ensemble.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "driver" / "top2.yaml", elsewhere)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
        "MLFLOW_TRACKING_URI": mlflow_server
    }
    proc = ffdi(
        ["ensemble", "top2.yaml", "--experiment", "spread", "--out", "sub.csv"], elsewhere, env
    )
    assert proc.returncode == 0, proc.stderr
    sub = pd.read_csv(elsewhere / "sub.csv")
    assert list(sub.columns) == ["img_name", "y_pred"] and len(sub) == 8
    assert not (elsewhere / "runs" / "mlflow.db").exists()  # the server, not a local default store
    ens = [
        r
        for r in client.search_runs([client.get_experiment_by_name("spread").experiment_id])
        if r.data.tags.get("ffdi.role") == "ensemble"
    ]
    assert len(ens) == 1 and len(ens[0].data.params["members"].split(",")) == 2


@pytest.mark.slow
def test_without_address_a_search_starts_its_own_ray(cluster, mlflow_server, tiny_data, tmp_path):
    """Ray's own default would join the cluster `ray start` made here; a search without an address
    does not.

    The search asks for more CPUs than any Ray here has, so it stops right after connecting; the
    cluster's job table tells whether it joined.
    """
    space = cluster_space(tmp_path, tiny_data, mlflow_server, "private", cpu=64)
    # RAY_TMPDIR leads to the cluster
    env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    proc = ffdi(["run", str(space), "--no-ensemble"], tmp_path, env)
    assert proc.returncode == 2 and "but the Ray cluster has" in proc.stderr, proc.stderr
    # (the first test shows a joining driver is listed)
    assert proc.pid not in cluster.query()["driver_pids"]


@pytest.mark.slow
def test_a_node_that_cannot_see_the_data_is_named(cluster, mlflow_server, tiny_data, tmp_path):
    """A third node whose filesystem view hides the data root: the search refuses to start."""
    hide = tiny_data.parent
    # A private mount namespace with an empty tmpfs over the data's folder: the node's processes
    # (and only they) see no dataset there, as a machine without the shared mount would.
    prefix = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs none "{hide}" && exec "$@"',
        "sh",
    ]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    blind = cluster.start_node(prefix=prefix)
    try:
        space = cluster_space(tmp_path, tiny_data, mlflow_server, "blind")
        proc = ffdi(["run", str(space), "--address", cluster.address], tmp_path, cluster.env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[0].startswith("error: 1 of 3 Ray node(s) that can run trials cannot see"), (
            proc.stderr
        )
        assert len(lines) == 2 and lines[1].startswith(f"  node {blind.node_id[:12]} ")
        assert f"data.root {tiny_data} is not a directory there" in lines[1]
        # nothing was written
        assert MlflowClient(mlflow_server).get_experiment_by_name("blind") is None
        assert not (tmp_path / "shared-storage").exists()
    finally:
        stop_session(blind.sid)
        cluster.nodes.remove(blind)
        cluster.wait_alive(2)


@pytest.mark.slow
def test_a_node_whose_cache_disk_is_too_small_is_named(cluster, mlflow_server, tiny_data, tmp_path):
    """A third node whose cache folder is on an 8 MB disk: the search refuses before any trial."""
    small = tmp_path / "small-disk"
    small.mkdir()
    prefix = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs -o size=8m none "{small}" && exec "$@"',
        "sh",
    ]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    cramped = cluster.start_node(prefix=prefix, env={"FFDI_TUNE_CACHE": str(small)})
    try:
        space = cluster_space(tmp_path, tiny_data, mlflow_server, "cramped")
        proc = ffdi(["run", str(space), "--address", cluster.address], tmp_path, cluster.env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[0] == (
            "error: 1 of 3 Ray node(s) that can run trials cannot hold this search's decode cache:"
        ), proc.stderr
        assert len(lines) == 2 and lines[1].startswith(f"  node {cramped.node_id[:12]} ")
        assert (
            f"more in {small} " in lines[1] and "GB free" in lines[1] and "--no-cache" in lines[1]
        )
        assert MlflowClient(mlflow_server).get_experiment_by_name("cramped") is None
    finally:
        stop_session(cramped.sid)
        cluster.nodes.remove(cramped)
        cluster.wait_alive(2)


@pytest.mark.slow
def test_losing_a_node_mid_search(make_cluster, mlflow_server, tmp_path):
    """Kill the worker node while it trains: its trial resumes on the head from its checkpoint."""
    cluster = make_cluster()
    head, worker = cluster.nodes
    # Enough images that an epoch takes seconds: the worker's trial is still training when its node
    # dies.
    data = "{root: data, demo: {n_train: 600, n_val: 48, n_test: 4, size: 32, seed: 5}}"
    space = cluster_space(
        tmp_path, data, mlflow_server, "node-loss", samples=2, epochs=3, scheduler="fifo"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ffdi_tune",
            "run",
            str(space),
            "--address",
            cluster.address,
            "--no-ensemble",
        ],
        cwd=tmp_path,
        env=cluster.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    client = MlflowClient(mlflow_server)
    try:
        # Wait until a trial on the worker has reported an epoch (so a checkpoint of it exists).
        deadline = time.time() + 300
        moved = None
        while moved is None:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            exp = client.get_experiment_by_name("node-loss")
            for run in client.search_runs([exp.experiment_id]) if exp else []:
                if (
                    run.data.tags.get("ffdi.node_id") == worker.node_id
                    and "val_auc" in run.data.metrics
                    and run.info.status == "RUNNING"
                ):
                    moved = run.data.tags["ffdi.trial_id"]
            time.sleep(0.5)
        # A lost machine takes all its processes with it: the raylet, then the rest of the node, the
        # running trial's worker included (on its own, a worker outlives its raylet for seconds and
        # can finish its epochs, reporting straight to the driver).
        os.kill(worker.raylet_pid(), signal.SIGKILL)
        for pid in session_pids(worker.sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already gone with its raylet
        out, err = proc.communicate(timeout=400)
    finally:
        stop_session(proc.pid)
        proc.wait()
    assert proc.returncode == 0, err

    children = runs_by_role(client, "node-loss")["trial"]
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["ffdi.epochs_run"] == "3"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")]
        # Resumed from its checkpoint, not restarted: every epoch was reported exactly once.
        assert sorted(steps) == [1, 2, 3], (run.data.tags["ffdi.trial_id"], steps)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == [
            "checkpoint/best.pt"
        ]
    [rescheduled] = [r for r in children if r.data.tags["ffdi.trial_id"] == moved]
    assert rescheduled.data.tags["ffdi.node_id"] == head.node_id
    best = torch.load(
        client.download_artifacts(rescheduled.info.run_id, "checkpoint/best.pt", str(tmp_path)),
        weights_only=True,
    )
    assert best["backbone"] == "test_resnet"


def test_ray_address_flag_then_env_then_a_private_local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_address(None) == "10.0.0.1:6379"
    assert ray_address("auto") == "auto"


def test_bucket_storage_keeps_outputs_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = SearchConfig.model_validate(
        {
            "name": "s",
            "data": {"root": "d"},
            "search": {"storage": "s3://bucket/prefix?endpoint_override=minio:9000"},
        }
    )
    storage, out_dir = search_dir(cfg)
    assert storage == "s3://bucket/prefix?endpoint_override=minio:9000"
    # absolute: trials.csv and the spool stay on this machine
    assert out_dir == tmp_path / "runs" / "s"
    assert experiment_path(storage, "s") == "s3://bucket/prefix/s?endpoint_override=minio:9000"
    cfg = cfg.model_copy(
        update={"search": cfg.search.model_copy(update={"storage": "file:///mnt/nfs/ray"})}
    )
    assert search_dir(cfg) == ("/mnt/nfs/ray", Path("/mnt/nfs/ray/s"))
