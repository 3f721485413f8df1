"""The lease that keeps one run of a search at a time across machines, on a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from ffdi_tune.tracking import LEASE, Lease, LeaseHeld, Tracker


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lease")
    return Tracker(f"sqlite:///{folder}/mlflow.db", (folder / "artifacts").as_uri())


@pytest.fixture()
def store(tracker, request):
    """The store, an experiment of the test's own, and a client on them."""
    return tracker, tracker.experiment_id(request.node.name), MlflowClient(tracker.uri)


def _elsewhere(lease: Lease) -> Lease:
    """``lease`` as taken by a process of another machine."""
    lease.me.update(host="other-host", pid=4242)
    return lease


def test_a_second_taker_is_refused_naming_the_holder_until_it_releases(store):
    tracker, exp, client = store
    first = _elsewhere(Lease(tracker, exp, settle_s=0))
    with first:
        held = json.loads(client.get_experiment(exp).tags[LEASE])
        assert held["host"] == "other-host" and held["pid"] == 4242
        with pytest.raises(LeaseHeld) as refused:
            Lease(tracker, exp, settle_s=0).take()
        assert refused.value.holder["host"] == "other-host" and refused.value.age_s < 60
    assert LEASE not in client.get_experiment(exp).tags  # released at the end
    with Lease(tracker, exp, settle_s=0):
        pass


def test_a_stale_lease_is_taken_over_and_its_old_holder_learns_it_lost(store):
    tracker, exp, client = store
    old = _elsewhere(Lease(tracker, exp, settle_s=0, stale_s=0.2))
    old.take()
    time.sleep(0.3)  # not renewed for longer than its stale_s
    new = Lease(tracker, exp, settle_s=0)
    new.take()
    assert new.current()["holder"] == new.me["holder"]
    assert old.renew() is False and old.lost
    old.release()  # not its own any more: left alone
    assert new.current()["holder"] == new.me["holder"]


def test_a_lease_of_a_dead_process_of_this_host_is_taken_at_once(store):
    tracker, exp, _ = store
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    killed = Lease(tracker, exp, settle_s=0)
    killed.me["pid"] = int(gone.stdout)  # renewed a moment ago, but its process has ended
    killed.take()
    Lease(tracker, exp, settle_s=0).take()


def test_the_holder_renews_while_it_runs(store):
    tracker, exp, _ = store
    with Lease(tracker, exp, settle_s=0, stale_s=0.2) as lease:
        first = lease.current()["renewed"]
        time.sleep(0.35)
        assert lease.current()["renewed"] > first and not lease.lost
        with pytest.raises(LeaseHeld):  # held longer than its stale_s, but renewed: still fresh
            _elsewhere(Lease(tracker, exp, settle_s=0)).take()


def test_of_two_takers_at_once_only_the_last_writer_goes_on(store):
    """MLflow has no compare-and-swap: a taker writes, waits and reads back. A second taker's
    write landing while the first waits wins; the first reads it back and is refused."""
    tracker, exp, _ = store
    first, second = (_elsewhere(Lease(tracker, exp, settle_s=0)) for _ in range(2))
    second.me["host"] = "third-host"
    first._settle = second._write  # type: ignore[method-assign]
    with pytest.raises(LeaseHeld) as refused:
        first.take()  # while it waited, the second's write landed
    assert refused.value.holder["host"] == "third-host"
    second.take()
    assert second.current()["holder"] == second.me["holder"]
