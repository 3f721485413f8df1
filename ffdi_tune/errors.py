"""The project's own exception tree.

Every error a user can fix (bad YAML, bad data, bad flags) is an :class:`FfdiError`. The CLI turns
it into one line, ``error: <what>, <why>, <how to fix>``, and exit status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "FfdiError",
    "ConfigError",
    "DataError",
    "SearchError",
    "TrackingError",
    "SearchInterrupted",
    "did_you_mean",
]


class FfdiError(Exception):
    """Base class of the errors the user can fix; the message is one line."""


class ConfigError(FfdiError):
    """A search-space or recipe file (or a CLI override of it) is invalid."""


class DataError(FfdiError):
    """The dataset on disk does not match the FFDI layout or cannot be read."""


class SearchError(FfdiError):
    """The search cannot start or continue (existing name, nothing to resume, cluster too small)."""


class TrackingError(FfdiError):
    """The MLflow tracking store cannot be used as configured."""


class SearchInterrupted(Exception):
    """The search was stopped (Ctrl-C, SIGTERM) with its state saved; the message says how to
    resume."""


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choices, or ``""`` when none is close.

    >>> did_you_mean("lr_max", ["lr", "gamma"])
    " (did you mean 'lr'?)"
    """
    close = difflib.get_close_matches(value, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
