"""The valset split a search fixes: stratified, seeded, identified by its report part's names,
which trials never read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ffdi_tune.data.holdout import NO_REPORT_HASH, report_hash, split_valset
from ffdi_tune.data.layout import Split, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError
from ffdi_tune.training.settings import TrainSettings


def valset(n_real: int, n_fake: int) -> Split:
    names = tuple(f"{i:04d}.jpg" for i in range(n_real + n_fake))
    targets = np.array([0] * n_real + [1] * n_fake)
    return Split("val", names, tuple(names), targets)


def test_split_is_stratified_seeded_and_complete():
    val = valset(30, 10)
    h = split_valset(val, 0.5, seed=3)
    assert split_valset(val, 0.5, seed=3) == h
    assert sorted(h.select_names + h.report_names) == sorted(val.names)
    fake = set(np.array(val.names)[val.targets == 1])
    assert len(fake & set(h.report_names)) == 5 and len(h.report_names) == 20
    assert split_valset(val, 0.5, seed=4).report_hash != h.report_hash
    quarter = split_valset(val, 0.25, seed=0)
    assert len(quarter.report_names) == 10 and len(fake & set(quarter.report_names)) in (2, 3)
    sel, rep = h.indices(val.names)
    assert [val.names[i] for i in rep] == list(h.report_names)  # valset's own order
    from ffdi_tune.tracking import holdout_tags

    assert holdout_tags(h) == {
        "ffdi.holdout.fraction": "0.5",
        "ffdi.holdout.seed": "3",
        "ffdi.holdout.report_hash": h.report_hash,
    }


def test_report_hash_ignores_order_and_fraction_zero_keeps_nothing_aside():
    assert (
        report_hash(["b.jpg", "a.jpg"]) == report_hash(("a.jpg", "b.jpg")) != report_hash(["a.jpg"])
    )
    h = split_valset(valset(3, 3), 0, seed=0)
    assert not h.honest and h.report_names == () and h.report_hash == NO_REPORT_HASH
    assert h.select_names == valset(3, 3).names


def test_a_split_that_would_lose_a_class_is_refused():
    with pytest.raises(DataError, match="needs at least 2 real and 2 fake valset images"):
        split_valset(valset(10, 1), 0.5, seed=0)


def test_trials_never_read_the_report_part(tiny_data, monkeypatch):
    """A spy on the image decoder: a trial given the search's selection part opens no image of
    the report part."""
    import ffdi_tune.data.layout as data
    from ffdi_tune.training.trial import train_trial

    cfg = DataConfig(root=str(tiny_data), cache=False)
    val = read_split(cfg, "val")
    h = split_valset(val, 0.5, seed=0)
    opened = []
    decode = data._decode
    monkeypatch.setattr(
        data, "_decode", lambda path, *a, **k: opened.append(path.name) or decode(path, *a, **k)
    )
    reports = []
    s = TrainSettings(backbone="test_resnet", img_size=32, batch_size=8, epochs=1)
    train_trial(s, cfg, lambda m, f: reports.append(m), val_names=h.select_names)
    assert set(h.select_names) <= set(opened) and not set(h.report_names) & set(opened)
    # with robust_val on (the default) the perturbed copy too was made of the selection part alone
    assert opened.count(h.select_names[0]) == 2 and reports[0]["epoch"] == 1


def test_a_changed_valset_is_split_by_the_recorded_report_names(tiny_data):
    from ffdi_tune.data.holdout import report_names_json, split_from_report_names

    val = read_split(DataConfig(root=str(tiny_data)), "val")
    h = split_valset(val, 0.5, seed=1)
    recorded = json.loads(report_names_json(h.report_names))
    # one recorded report image is gone, one new image arrived
    gone = h.report_names[0]
    changed = val.only(tuple(n for n in val.names if n != gone))
    again, missing = split_from_report_names(changed, recorded + ["never-seen.jpg"], 0.5, 1)
    assert missing == 2  # the gone one, and a recorded name that is not there
    assert set(again.report_names) == set(h.report_names) - {gone}
    assert set(again.select_names) == set(h.select_names)
    assert again.report_hash == report_hash(again.report_names) != h.report_hash


def test_the_report_hash_encodes_names_unambiguously():
    # joined with newlines, ["a\nb"] and ["a", "b"] would hash the same
    assert report_hash(["a\nb"]) != report_hash(["a", "b"])
    assert report_hash(["a,b"]) != report_hash(["a", "b"])


def test_a_split_recorded_with_the_former_hash_still_matches(tiny_data):
    from ffdi_tune.data.holdout import legacy_report_hash

    h = split_valset(read_split(DataConfig(root=str(tiny_data)), "val"), 0.5, seed=2)
    assert h.matches(h.report_hash) and h.matches(legacy_report_hash(h.report_names))
    assert legacy_report_hash(h.report_names) != h.report_hash
    assert not h.matches(legacy_report_hash(h.select_names))
