"""Helpers shared by the tests: the repository's path, search YAMLs, the CLI in a fresh process and
a search's runs read back from MLflow. They return facts; the tests assert on them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

__all__ = [
    "REPO",
    "write_space",
    "run_cli",
    "runs_by_role",
    "store_client",
    "train_collecting",
    "hold_search_lock",
]

REPO = Path(__file__).resolve().parents[1]


def write_space(folder: Path, text: str, filename: str = "space.yaml") -> Path:
    """A search YAML ``text`` written in ``folder`` (made if need be); its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(text)
    return path


def run_cli(cwd: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """``ffdi-tune ARGS`` in a fresh process started in ``cwd``, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "ffdi_tune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        **kwargs,
    )


def store_client(folder: Path) -> MlflowClient:
    """A client of the sqlite store a search run in ``folder`` writes by default."""
    return MlflowClient(f"sqlite:///{folder}/runs/mlflow.db")


def runs_by_role(client: MlflowClient, experiment: str) -> dict[str, list]:
    """The experiment's runs by their ``ffdi.role`` tag (search, trial, ensemble); empty lists
    when the experiment does not exist yet."""
    found = {"search": [], "trial": [], "ensemble": []}
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        for run in client.search_runs([exp.experiment_id]):
            found.setdefault(run.data.tags.get("ffdi.role", ""), []).append(run)
    return found


def train_collecting(settings, data: Path, resume_from: Path | None = None) -> tuple[dict, list]:
    """Train ``settings`` on the dataset at ``data``: (best metrics, [(metrics, best.pt, last.pt)
    of each epoch as reported])."""
    import torch

    from ffdi_tune.data.settings import DataConfig
    from ffdi_tune.training.checkpoint import BEST_FILE, LAST_FILE
    from ffdi_tune.training.trial import train_trial

    reports = []

    def report(metrics, folder):
        best = torch.load(folder / BEST_FILE, weights_only=True)
        last = torch.load(folder / LAST_FILE, weights_only=True)
        reports.append((metrics, best, last))

    best = train_trial(settings, DataConfig(root=str(data)), report, resume_from=resume_from)
    return best, reports


_HOLD = """
import sys, time
from pathlib import Path
from ffdi_tune.search.lock import search_lock
with search_lock(Path(sys.argv[1]), "held"):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_search_lock(out_dir: Path) -> subprocess.Popen:
    """Another process that takes the lock of the search whose output folder is ``out_dir`` and
    keeps it (for two minutes, or until the caller kills it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc
