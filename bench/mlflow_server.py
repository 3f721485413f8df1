"""How many trials logging at once one MLflow tracking server takes, and at what latency.

Starts a real `mlflow server` (sqlite backend, artifacts proxied by the server, one worker: the
setup of tests/test_cluster.py and of a small team's first server) on a free loopback port, then
runs rounds of W writers at once. Each writer logs what the driver logs for one trial of a search: a
child run with its params, per-epoch metric batches, a node tag, a checkpoint artifact, and the
final status. Prints per-round latency percentiles of each request kind and the requests served per
second, and ends with one JSON object.

In a search all writes come from one process, the driver's MlflowTrials callback, one request at
a time; W writers at once is what W drivers (searches) sharing one server look like, or an upper
bound for one search whose trials all report in the same instant.

    python bench/mlflow_server.py [--writers 1,4,16,32] [--epochs 10] [--checkpoint-mb 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from ffdi_tune.scoring.epoch_metrics import epoch_metric_names

# what a trial logs per epoch
METRICS = epoch_metric_names()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [
            str(bindir / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        start_new_session=True,
        stdout=open(root / "server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError((root / "server.log").read_text()[-2000:]) from None
            time.sleep(0.5)


def one_trial(
    client: MlflowClient,
    exp_id: str,
    parent: str,
    name: str,
    epochs: int,
    checkpoint: Path,
    timings: dict[str, list[float]],
    lock: threading.Lock,
) -> None:
    """The requests the driver sends for one trial, each timed."""

    def timed(kind: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        with lock:
            timings[kind].append(time.perf_counter() - t0)
        return out

    run = timed(
        "create_run",
        client.create_run,
        exp_id,
        run_name=name,
        tags={"ffdi.role": "trial", "mlflow.parentRunId": parent, "ffdi.trial_id": name},
    )
    run_id = run.info.run_id
    timed(
        "log_params",
        client.log_batch,
        run_id,
        params=[Param(f"param_{i}", str(i)) for i in range(40)],
    )
    for epoch in range(1, epochs + 1):
        now = int(time.time() * 1000)
        timed(
            "log_metrics",
            client.log_batch,
            run_id,
            metrics=[Metric(k, 0.5 + epoch / 100, now, epoch) for k in METRICS],
        )
        if epoch == 1:
            timed("set_tag", client.set_tag, run_id, "ffdi.node_id", "0" * 56)
    timed("log_artifact", client.log_artifact, run_id, str(checkpoint), "checkpoint")
    timed("finish", client.set_terminated, run_id, "FINISHED")


def one_round(client: MlflowClient, writers: int, epochs: int, checkpoint: Path) -> dict:
    exp_id = client.create_experiment(f"bench-{writers}-{time.time_ns()}")
    parent = client.create_run(exp_id, run_name="search").info.run_id
    timings: dict[str, list[float]] = {
        k: []
        for k in ("create_run", "log_params", "log_metrics", "set_tag", "log_artifact", "finish")
    }
    lock = threading.Lock()
    errors: list[str] = []

    def writer(i: int) -> None:
        try:
            one_trial(client, exp_id, parent, f"t{i}", epochs, checkpoint, timings, lock)
        except Exception as exc:  # a refused or timed-out request: count it, the round goes on
            with lock:
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    finished = sum(
        r.info.status == "FINISHED"
        for r in client.search_runs([exp_id], "tags.`ffdi.role` = 'trial'")
    )
    out = {
        "writers": writers,
        "wall_s": round(wall, 2),
        "trials_finished": finished,
        "failed_writers": len(errors),
        "first_error": errors[0] if errors else "",
        "requests_per_s": round(sum(len(v) for v in timings.values()) / wall, 1),
    }
    for kind, values in timings.items():
        values = sorted(values) or [float("nan")]
        out[f"{kind}_p50_ms"] = round(1000 * statistics.median(values), 1)
        out[f"{kind}_p95_ms"] = round(
            1000 * values[min(len(values) - 1, int(0.95 * len(values)))], 1
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--writers", default="1,4,16,32", help="comma-separated numbers of writers at once"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--checkpoint-mb", type=float, default=4.0, help="size of each trial's best.pt")
    args = p.parse_args()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    with tempfile.TemporaryDirectory(prefix="ffdi-bench-mlflow-") as tmp:
        root = Path(tmp)
        checkpoint = root / "best.pt"
        checkpoint.write_bytes(os.urandom(int(args.checkpoint_mb * 2**20)))
        proc, uri = start_server(root)
        try:
            client = MlflowClient(uri)
            rounds = []
            for writers in (int(w) for w in args.writers.split(",")):
                result = one_round(client, writers, args.epochs, checkpoint)
                rounds.append(result)
                r = result
                failed = (
                    f"; {r['failed_writers']} failed: {r['first_error']}"
                    if r["failed_writers"]
                    else ""
                )
                print(
                    f"{writers:3d} writers: {r['wall_s']:6.2f} s, {r['requests_per_s']:6.1f} "
                    f"req/s, log_metrics p50 {r['log_metrics_p50_ms']:.0f} ms p95 "
                    f"{r['log_metrics_p95_ms']:.0f} ms, checkpoint upload p50 "
                    f"{r['log_artifact_p50_ms']:.0f} ms p95 {r['log_artifact_p95_ms']:.0f} ms, "
                    f"{r['trials_finished']}/{writers} finished{failed}",
                    flush=True,
                )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    print(
        json.dumps({"epochs": args.epochs, "checkpoint_mb": args.checkpoint_mb, "rounds": rounds})
    )


if __name__ == "__main__":
    main()
