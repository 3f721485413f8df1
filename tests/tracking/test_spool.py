"""The spool: a journal of writes that could not reach their store, replayed in order later."""

from __future__ import annotations

import pytest

from ffdi_tune.tracking.spool import Spool, SpooledWrites


class Store:
    """A store in memory that can be away (unreachable) or refuse writes to some runs."""

    def __init__(self):
        self.applied: list[dict] = []
        self.away = False
        self.refused: set[str] = set()

    def apply(self, entry: dict) -> str:
        if self.away:
            raise ConnectionError("Connection refused")
        if entry["run"] in self.refused:
            raise ValueError(f"no run {entry['run']}")
        self.applied.append(entry)
        return entry["run"]


def _writes(tmp_path, store: Store) -> SpooledWrites:
    return SpooledWrites(
        store.apply,
        lambda exc: isinstance(exc, ConnectionError),
        Spool(tmp_path / "spool"),
        {"uri": "memory"},
        "the store",
        probe_s=0.0,
    )


def test_a_line_cut_by_a_killed_process_costs_only_itself(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.append({"op": "tags", "run": "a", "tags": {}}, {"uri": "x"})
    with open(spool.journal, "a") as f:
        f.write('{"op": "tags", "ru')  # the process died here
    spool.append({"op": "finish", "run": "b", "status": "FINISHED"}, {"uri": "x"})
    assert [e["run"] for e in spool.entries()] == ["a", "b"]


def test_writes_wait_while_the_store_is_away_and_reach_it_in_order(tmp_path):
    store = Store()
    writes = _writes(tmp_path, store)
    assert writes.write({"op": "tags", "run": "a"}) == "a"
    store.away = True
    assert writes.write({"op": "tags", "run": "b"}) is None
    assert writes.write({"op": "tags", "run": "c"}) is None
    assert writes.pending() == 2 and [e["run"] for e in store.applied] == ["a"]
    assert not writes.replay()  # still away: nothing lost, nothing applied
    store.away = False
    assert writes.write({"op": "tags", "run": "d"}) == "d"  # the kept ones go first
    assert [e["run"] for e in store.applied] == ["a", "b", "c", "d"]
    assert writes.pending() == 0 and not (tmp_path / "spool").exists()


def test_a_kept_file_is_copied_so_its_original_may_go(tmp_path):
    store = Store()
    writes = _writes(tmp_path, store)
    original = tmp_path / "best.pt"
    original.write_bytes(b"weights")
    store.away = True
    writes.write({"op": "artifact", "run": "a", "path": str(original)})
    original.unlink()
    kept = Spool(tmp_path / "spool").entries()[0]["path"]
    assert open(kept, "rb").read() == b"weights"


def test_a_refused_write_is_raised_at_once_and_set_aside_on_replay(tmp_path):
    store = Store()
    store.refused.add("gone")
    writes = _writes(tmp_path, store)
    with pytest.raises(ValueError):
        writes.write({"op": "tags", "run": "gone"})  # refused: a bug to see, not an outage
    assert writes.pending() == 0
    store.away = True
    writes.write({"op": "tags", "run": "gone"})
    writes.write({"op": "tags", "run": "kept"})
    store.away = False
    assert writes.replay() and [e["run"] for e in store.applied] == ["kept"]
    rejected = (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1 and '"run": "gone"' in rejected[0]


def test_without_a_spool_writes_go_straight_to_the_store(tmp_path):
    store = Store()
    writes = SpooledWrites(store.apply, lambda exc: True, None, {}, "the store")
    store.away = True
    with pytest.raises(ConnectionError):
        writes.write({"op": "tags", "run": "a"})
    assert writes.pending() == 0 and writes.replay()
