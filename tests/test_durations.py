"""Durations as people write them, and one clear error for anything else."""

from __future__ import annotations

import pytest

from ffdi_tune.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("8h", 28800),
        ("90m", 5400),
        ("1h30m", 5400),
        ("45s", 45),
        ("2d", 172800),
        ("1.5h", 5400),
        (600, 600),
        ("600", 600),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["8 hours", "h", "", "-5", 0, "1x"])
def test_bad_durations_say_what_is_accepted(bad):
    with pytest.raises(ValueError, match="duration|positive"):
        parse_duration(bad)


def test_durations_print_as_people_write_them():
    assert [format_duration(s) for s in (5400, 45.2, 0, 3661)] == ["1h30m", "45s", "0s", "1h1m1s"]
