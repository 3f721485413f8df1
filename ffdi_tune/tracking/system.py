"""System metrics of a trial, sampled where it runs and logged on its MLflow run by the driver.

MLflow's own ``log_system_metrics`` starts a thread that writes to the store from the process
being measured; trials never talk to MLflow (their runs are written by the driver's mirror, so
workers need no tracking access). :class:`SystemSampler` therefore runs MLflow's own monitors
(CPU and memory, disk, network, and NVIDIA or AMD GPUs where ``nvidia-ml-py`` or ``pyrsmi`` is
installed; as MLflow's own, they measure the whole machine, every GPU of it, not the trial alone)
in the trial's process, every ``interval_s`` seconds; each epoch's report carries the
samples taken since the last one, and the driver logs them under MLflow's names
(``system/cpu_utilization_percentage``...) with their own times, so the run's "System metrics" tab
in the MLflow UI charts them. ``tracking.system_metrics: false`` turns it off.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

__all__ = ["SystemSampler", "SYSTEM_PREFIX", "system_metric_rows"]

SYSTEM_PREFIX = "system/"
REPORT_KEY = "system_metrics"  # the entry of a trial's report that carries its samples


def _monitors() -> list:
    """MLflow's monitors of this machine; the GPU one only where its library finds a device."""
    import psutil
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    psutil.cpu_percent()  # the first reading since nothing is 0: start the count now
    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu in (GPUMonitor, ROCMMonitor):
        try:
            monitors.append(gpu())
            break
        except Exception:  # no library, or no such device: MLflow logs no GPU figures either
            continue
    return monitors


class SystemSampler:
    """Sample this machine every ``interval_s`` seconds on a daemon thread (the first sample at
    once); :meth:`drain` hands over the samples not yet handed over, as ``[time_ms, {name:
    value}]`` rows, names prefixed ``system/``."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self._rows: list[list[Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            self._monitors = _monitors()
        except Exception as exc:  # no psutil, or MLflow's monitors moved: the trial goes on
            logging.getLogger(__name__).warning("system metrics off: %s", exc)
            self._monitors = []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ffdi-system-metrics")

    def __enter__(self) -> SystemSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def _loop(self) -> None:
        while self._monitors and not self._stop.is_set():
            try:
                row = self._sample()
            except Exception as exc:  # a monitor that breaks mid-trial must not stop the trial
                logging.getLogger(__name__).warning("system metrics stopped: %s", exc)
                return
            with self._lock:
                self._rows.append(row)
            self._stop.wait(self.interval_s)

    def _sample(self) -> list[Any]:
        values: dict[str, float] = {}
        for monitor in self._monitors:
            monitor.collect_metrics()
            values.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        return [int(time.time() * 1000), {SYSTEM_PREFIX + k: float(v) for k, v in values.items()}]

    def drain(self) -> list[list[Any]]:
        """The samples taken since the last call, oldest first."""
        with self._lock:
            rows, self._rows = self._rows, []
        return rows

    def report_entry(self) -> dict[str, str]:
        """The samples taken since the last call as one entry of a trial's report: JSON text,
        which Tune's result loggers keep as it is (a list of samples makes its TensorBoard logger
        warn that it cannot log it)."""
        return {REPORT_KEY: json.dumps(self.drain())}


def system_metric_rows(result: dict[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """The ``(time_ms, metrics)`` samples a trial's report carries (none when it carries none)."""
    return [(int(t), dict(values)) for t, values in json.loads(result.get(REPORT_KEY) or "[]")]
