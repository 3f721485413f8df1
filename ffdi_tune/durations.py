"""Durations as people write them: ``8h``, ``90m``, ``1h30m``, ``45s``, ``2d``.

>>> parse_duration("1h30m"), parse_duration("90m"), parse_duration(45)
(5400.0, 5400.0, 45.0)
"""

from __future__ import annotations

import re

__all__ = ["parse_duration", "format_duration"]

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$"
)


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``8h``, ``90m``, ``1h30m``, ``45s``, ``2d`` or a plain number of seconds.

    Raises ValueError with the accepted forms otherwise.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        match = _DURATION.match(text)
        if text.replace(".", "", 1).isdigit():
            seconds = float(text)
        elif match and text:
            seconds = sum(
                float(v) * _UNITS[u] for v, u in zip(match.groups(), "dhms", strict=True) if v
            )
        else:
            raise ValueError(
                f"{value!r} is not a duration; write e.g. 8h, 90m, 1h30m, 45s or a number of "
                "seconds"
            )
    if seconds <= 0:
        raise ValueError(f"a time budget must be positive, but got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``, ``45`` -> ``45s``: durations as people write them.

    >>> format_duration(5400), format_duration(45.2), format_duration(0)
    ('1h30m', '45s', '0s')
    """
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"
