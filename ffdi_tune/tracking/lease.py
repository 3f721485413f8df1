"""A lease on a search, kept in MLflow: one run of a search at a time across machines.

The file lock of :mod:`ffdi_tune.search.lock` stops a second run on the same machine. A search
whose state lives in a bucket can be run (or ``--resume``\\ d) from any machine; there the lease
does it. It is a tag on the search's MLflow experiment (one per search name, so it exists before
the search's parent run, for a fresh search as for a resume), holding who took it (a random id,
host, pid) and when it was last renewed. The holder renews it every ``stale_s / 4`` seconds on a
daemon thread and clears it at the end. Another run is refused while the lease is fresh; a lease
not renewed for ``stale_s`` seconds (its holder was killed, or lost its network), or one held by a
dead process of this very host, is taken over.

MLflow has no compare-and-swap: a taker writes its lease, waits ``settle_s`` and reads it back;
of two runs that write at once, only the one whose write landed last reads itself back and goes on.
Freshness is judged on the reader's clock: machines that share a search need clocks agreeing to
well under ``stale_s``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from ffdi_tune.tracking.schema import LEASE
from ffdi_tune.tracking.store import StoreReader

__all__ = ["Lease", "LeaseHeld", "STALE_S"]

STALE_S = 120.0  # a lease not renewed for this long is taken over


class LeaseHeld(Exception):
    """Another live run holds the lease; ``holder`` is what it recorded, ``age_s`` since when."""

    def __init__(self, holder: dict[str, Any], age_s: float):
        super().__init__(f"held by host {holder.get('host')}, pid {holder.get('pid')}")
        self.holder, self.age_s = holder, age_s


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` was a process of this host that no longer runs."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


class Lease:
    """The lease of the experiment ``experiment_id`` in ``store``; as a context manager it takes
    the lease, renews it while the block runs and clears it at the end."""

    def __init__(
        self,
        store: StoreReader,
        experiment_id: str,
        stale_s: float = STALE_S,
        settle_s: float = 1.0,
    ):
        self.store, self.experiment_id = store, experiment_id
        self.stale_s, self.settle_s = stale_s, settle_s
        self.me = {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self.lost = False  # set when another run took the lease over while this one held it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> dict[str, Any] | None:
        """The lease as recorded now (None when nobody holds it)."""
        exp = self.store.client.get_experiment(self.experiment_id)
        try:
            return json.loads(exp.tags.get(LEASE) or "null")
        except ValueError:
            return None  # not ours to read: treated as free

    def _write(self) -> None:
        record = {**self.me, "renewed": time.time(), "stale_s": self.stale_s}
        self.store.client.set_experiment_tag(self.experiment_id, LEASE, json.dumps(record))

    def take(self) -> None:
        """Take the lease; :class:`LeaseHeld` when a live run of another process holds it."""
        held = self.current()
        if held and held.get("holder") != self.me["holder"]:
            age = time.time() - float(held.get("renewed", 0))
            if age < float(held.get("stale_s", self.stale_s)) and not _dead_here(held):
                raise LeaseHeld(held, age)
        self._write()
        self._settle()
        held = self.current()
        if not held or held.get("holder") != self.me["holder"]:
            raise LeaseHeld(held or {}, 0.0)  # another taker's write landed after this one

    def _settle(self) -> None:
        """Wait for a concurrent taker's write to land (longer than a store's write takes)."""
        time.sleep(self.settle_s)

    def renew(self) -> bool:
        """Renew the lease; False (and :attr:`lost`) when another run has taken it over."""
        held = self.current()
        if held and held.get("holder") != self.me["holder"]:
            self.lost = True
            return False
        self._write()
        return True

    def release(self) -> None:
        """Clear the lease, if this run still holds it."""
        held = self.current()
        if held and held.get("holder") == self.me["holder"]:
            self.store.client.delete_experiment_tag(self.experiment_id, LEASE)

    def _keep(self) -> None:
        while not self._stop.wait(self.stale_s / 4):
            try:
                if not self.renew():  # (stopping a search from this thread could lose work)
                    logging.getLogger(__name__).warning(
                        "the search's lease was taken over by another run (host %s), which "
                        "found it stale; this run keeps going, but the two now share its state",
                        (self.current() or {}).get("host"),
                    )
                    return
            except Exception as exc:  # a store away for a moment: renewed at the next tick
                logging.getLogger(__name__).debug("lease not renewed: %s", exc)

    def __enter__(self) -> Lease:
        self.take()
        self._thread = threading.Thread(target=self._keep, daemon=True, name="ffdi-lease")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.release()
        except Exception:  # the store is away: the lease goes stale on its own
            pass
