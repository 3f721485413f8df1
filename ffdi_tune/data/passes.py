"""Passes over every image of a split: spread over the CPUs the job has, with a progress report.

A pass runs a function over chunks of work in threads or processes (``bench/scale.py`` measures
which is faster for each pass) and reports progress: a tqdm bar with rate and ETA when stderr is a
terminal, otherwise a plain line every ``LINE_EVERY_S`` seconds, and nothing at all for a pass that
ends within ``QUIET_S`` seconds.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Any, Literal

__all__ = ["available_cpus", "Progress", "run_pass"]

QUIET_S = 3.0  # passes shorter than this report nothing
LINE_EVERY_S = 15.0  # without a terminal: one line per this many seconds


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and schedulers set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Progress:
    """Counts done items of a pass of ``total`` and shows it (bar on a terminal, plain lines
    otherwise); ``clock`` is a monotonic clock (tests pass their own)."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "img",
        stream=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit, self.clock = total, desc, unit, clock
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = self._last_line = clock()
        self._bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                delay=QUIET_S,
                file=self.stream,
                dynamic_ncols=True,
            )

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self.clock()
        if now - self.started >= QUIET_S and (
            now - self._last_line >= LINE_EVERY_S or self.done >= self.total
        ):
            self._last_line = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (
            f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} "
            f"({100 * self.done / max(self.total, 1):.0f}%), {rate:,.0f} {self.unit}/s, ETA "
            f"{eta:,.0f} s"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _executor(kind: str, workers: int) -> Executor:
    if kind == "processes":
        import multiprocessing

        # fork is quick and needs nothing pickled but the chunks; the parent is not threaded here
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def run_pass(
    work: Callable[[Sequence[Any]], Any],
    items: Sequence[Any],
    desc: str,
    workers: int | None = None,
    kind: Literal["threads", "processes"] = "threads",
    chunk: int = 64,
    on_result: Callable[[Sequence[Any], Any], None] | None = None,
) -> None:
    """Call ``work(items[i:i + chunk])`` for every chunk, ``workers`` at a time, reporting progress.

    ``on_result(chunk, result)`` receives each chunk's result in the calling thread, as it ends.
    An exception in any chunk stops the pass and is raised here.
    """
    workers = workers or available_cpus()
    chunks: Iterable[Sequence[Any]] = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    progress = Progress(len(items), desc)
    try:
        if workers == 1 or len(items) <= chunk:
            for part in chunks:
                result = work(part)
                if on_result is not None:
                    on_result(part, result)
                progress.update(len(part))
            return
        with _executor(kind, workers) as pool:
            futures = {pool.submit(work, part): part for part in chunks}
            try:
                for future in as_completed(futures):
                    result = future.result()
                    if on_result is not None:
                        on_result(futures[future], result)
                    progress.update(len(futures[future]))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        progress.close()
