"""Passes over every image: all chunks done once on threads or processes, errors raised, and the
progress a user sees (a bar on a terminal, plain lines in a log, nothing for a short pass)."""

from __future__ import annotations

import io

import pytest

from ffdi_tune.data.passes import Progress, run_pass


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_a_log_gets_a_plain_line_per_interval_with_rate_and_eta(clock):
    log = io.StringIO()
    progress = Progress(1000, "decode cache: trainset", stream=log, clock=clock)
    clock.now += 1.0
    progress.update(100)
    assert log.getvalue() == ""  # under QUIET_S: a short pass says nothing
    clock.now += 9.0
    progress.update(100)  # under LINE_EVERY_S: still quiet
    assert log.getvalue() == ""
    clock.now += 10.0
    progress.update(400)  # 20 s in: 600 of 1000 at 30 img/s
    assert log.getvalue() == "decode cache: trainset: 600/1,000 img (60%), 30 img/s, ETA 13 s\n"
    clock.now += 5.0
    progress.update(100)  # within LINE_EVERY_S of the last line: quiet
    assert log.getvalue().count("\n") == 1
    clock.now += 5.0
    progress.update(300)  # the last step always reports
    assert log.getvalue().splitlines()[-1].startswith("decode cache: trainset: 1,000/1,000 img")
    progress.close()


def test_a_short_pass_says_nothing_even_at_its_end(clock):
    log = io.StringIO()
    progress = Progress(10, "check", stream=log, clock=clock)
    clock.now += 0.5
    progress.update(10)
    progress.close()
    assert log.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    progress = Progress(10, "check", stream=screen)
    assert type(progress._bar).__name__ == "tqdm" and progress._bar.fp is not None
    progress.update(10)
    assert progress._bar.n == 10
    progress.close()


def _square(chunk):
    return [x * x for x in chunk]


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_every_chunk_runs_once_and_its_result_comes_back(kind):
    got = {}
    run_pass(
        _square,
        list(range(1000)),
        "squares",
        workers=2,
        kind=kind,
        chunk=64,
        on_result=lambda part, result: got.update(zip(part, result, strict=True)),
    )
    assert got == {x: x * x for x in range(1000)}


def _fails_on_500(chunk):
    if 500 in chunk:
        raise ValueError("image 500 does not decode")
    return chunk


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_failing_chunk_stops_the_pass_with_its_error(kind):
    with pytest.raises(ValueError, match="image 500 does not decode"):
        run_pass(_fails_on_500, list(range(1000)), "check", workers=2, kind=kind, chunk=64)
