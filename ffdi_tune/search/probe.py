"""Timing probes: what one epoch of a backbone at a size costs on this machine, before Ray starts.

A probe builds the backbone (no weights needed: the speed is the same), trains it on random
batches of the trial's size for a few steps and scores a few batches, with every CPU or on the
accelerator a trial would get. It also times what a trial pays once an epoch besides its batches:
writing ``best.pt`` and ``last.pt`` (weights, optimizer state) and Ray Tune's copy of that folder
into the search's storage. Results are kept per machine (host, device, threads, torch version)
in ``probes.json`` in the decode cache's folder, so a second search on the same machine does not
pay for them again.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ffdi_tune.files import write_atomic
from ffdi_tune.models.factory import create_model
from ffdi_tune.training.optimization import amp_dtype, make_optimizer
from ffdi_tune.training.settings import TrainSettings

__all__ = ["ProbeResult", "probe", "probe_cached", "PROBE_FILE"]

PROBE_FILE = "probes.json"
PROBE_VERSION = 2  # part of each kept probe's key: a probe that measured less is probed again


@dataclass(frozen=True)
class ProbeResult:
    """Seconds per training step (a batch of ``batch_size``), per scored image, and per epoch's
    checkpoint (written, then copied as Tune persists it)."""

    train_step_s: float
    eval_image_s: float
    batch_size: int
    checkpoint_s: float = 0.0

    def epoch_s(self, train_images: int, eval_images: int) -> float:
        """One epoch: every training batch, then scoring ``eval_images``, then its checkpoint."""
        steps = max(train_images // self.batch_size, 1)
        return steps * self.train_step_s + eval_images * self.eval_image_s + self.checkpoint_s


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def probe(
    settings: TrainSettings,
    steps: int = 200,
    max_seconds: float = 8.0,
    folder: Path | None = None,
) -> ProbeResult:
    """Time ``steps`` training steps (at most ``max_seconds``, after two warm-up steps) and as
    many scoring batches, for ``settings``' backbone, size, batch, optimizer and AMP, and one
    epoch's checkpoint written in ``folder`` (the system's temporary folder when None)."""
    device = _device()
    model = create_model(
        settings.backbone, False, settings.drop_rate, settings.input, settings.drop_path_rate
    ).to(device)
    optimizer = make_optimizer(model, settings)
    amp = amp_dtype(settings.amp, device)
    batch = torch.randn(settings.batch_size, 3, settings.img_size, settings.img_size, device=device)
    target = torch.randint(0, 2, (settings.batch_size,), device=device)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def eval_step() -> None:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            model(batch)

    model.train()
    train_step_s = _seconds_per_call(train_step, steps, max_seconds / 2, device)
    model.eval()
    eval_step_s = _seconds_per_call(eval_step, steps, max_seconds / 2, device)
    checkpoint_s = _checkpoint_seconds(model, optimizer, folder)
    return ProbeResult(
        train_step_s, eval_step_s / settings.batch_size, settings.batch_size, checkpoint_s
    )


def _checkpoint_seconds(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path | None
) -> float:
    """Write a best.pt (weights) and a last.pt (weights and optimizer state) as a trial does each
    epoch, and copy the folder once as Tune does when it persists a checkpoint."""
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ffdi-probe-", dir=folder) as tmp:
        start = time.perf_counter()
        written = Path(tmp) / "written"
        written.mkdir()
        torch.save({"model": model.state_dict()}, written / "best.pt")
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, written / "last.pt"
        )
        shutil.copytree(written, Path(tmp) / "persisted")
        return time.perf_counter() - start


def _seconds_per_call(step, calls: int, max_seconds: float, device: torch.device) -> float:
    for _ in range(2):  # warm-up: allocator, cuDNN autotuning, lazy inits
        step()
    _sync(device)
    start, done = time.perf_counter(), 0
    while done < calls and (done == 0 or time.perf_counter() - start < max_seconds):
        step()
        done += 1
    _sync(device)
    return (time.perf_counter() - start) / done


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _key(settings: TrainSettings) -> str:
    device = _device()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return "|".join(
        str(part)
        for part in (
            PROBE_VERSION,
            platform.node(),
            where,
            torch.get_num_threads(),
            torch.__version__,
            settings.backbone,
            settings.img_size,
            settings.batch_size,
            settings.optimizer,
            settings.amp,
            settings.input,
        )
    )


def probe_cached(settings: TrainSettings, folder: Path, echo=print) -> ProbeResult:
    """:func:`probe`, or what an earlier probe of the same settings on this machine measured."""
    path = Path(folder) / PROBE_FILE
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    key = _key(settings)
    if key in kept:
        return ProbeResult(**kept[key])
    echo(f"probe: timing {settings.backbone} at {settings.img_size} px ...")
    result = probe(settings, folder=folder)
    kept[key] = asdict(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(kept, indent=1))
    return result
