"""What a search recorded, read back: its YAML from a real MLflow store, its data section, its
perturbation recipe, its valset split (pooled searches must share it) and its data fingerprints."""

from __future__ import annotations

import pytest

from ffdi_tune import tracking
from ffdi_tune.data.check import check_dataset
from ffdi_tune.data.holdout import split_valset
from ffdi_tune.data.layout import read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.search_record import (
    check_data_unchanged,
    recorded_data_root,
    recorded_holdout,
    search_config,
    search_data,
    search_robust_val,
)
from ffdi_tune.errors import ConfigError, DataError
from ffdi_tune.tracking import Tracker

SEARCH_YAML = """name: recorded
data:
  root: /elsewhere/data
  val_dir: valset
  cache_dir: /elsewhere/cache
  exclude: {val: [broken.jpg]}
robust_val: {seed: 7}
"""


def test_the_search_yaml_comes_back_from_the_store(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", (tmp_path / "artifacts").as_uri())
    exp = tracker.experiment_id("recorded")
    tracker.search_run(exp, "recorded", False, SEARCH_YAML, str(tmp_path))
    config = search_config(tracker, "recorded")
    assert config["name"] == "recorded" and config["robust_val"] == {"seed": 7}
    assert search_config(tracker, "never-ran") == {}
    # the layout and exclusions come along; the root, cache and demo belong to the search's machine
    data = search_data(config, "/here/data", on_bad_image="skip")
    assert data.root == "/here/data" and data.exclude == {"val": ["broken.jpg"]}
    assert data.cache_dir is None and data.on_bad_image == "skip"


def test_a_data_section_that_no_longer_validates_falls_back_to_the_defaults():
    data = search_data({"data": {"val_dir": 3, "gone_key": True}}, "/here")
    assert data == DataConfig(root="/here")


def test_the_perturbation_recipe_is_the_recorded_one_switched_on():
    assert search_robust_val({"robust_val": {"seed": 7, "enabled": False}}, "s").seed == 7
    assert search_robust_val({"robust_val": {"enabled": False}}, "s").enabled
    assert search_robust_val({}, "s").seed == 0  # none recorded: the default recipe
    with pytest.raises(ConfigError, match="search 's': robust_val: .*; rank with metric val_auc"):
        search_robust_val({"robust_val": {"ops_per_image": [3, 1]}}, "s")


def test_the_data_root_must_be_recorded():
    assert recorded_data_root({tracking.DATA_ROOT: "/data"}, "s") == "/data"
    with pytest.raises(ConfigError, match="no data root is recorded for search 's'; pass --data"):
        recorded_data_root({}, "s")


def test_pooled_searches_must_share_their_valset_split(tiny_data):
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    half, other = split_valset(val, 0.5, 0), split_valset(val, 0.5, 1)
    tags = tracking.holdout_tags(half)
    assert recorded_holdout({"a": tags, "b": dict(tags)}) == (0.5, 0, half.report_hash)
    # a search older than recorded splits chose on all of valset
    assert recorded_holdout({"old": {}}) == (0.0, 0, "none")
    with pytest.raises(ConfigError, match="searches 'a' and 'b' split valset differently"):
        recorded_holdout({"a": tags, "b": tracking.holdout_tags(other)})


def test_val_and_test_must_be_the_files_a_search_at_the_same_root_fingerprinted(tiny_data):
    check = check_dataset(DataConfig(root=str(tiny_data)), splits=("val", "test"))
    same = {tracking.DATA_ROOT: str(tiny_data)}
    same |= {f"{tracking.FINGERPRINT_PREFIX}{s}": check.fingerprints[s] for s in ("val", "test")}
    check_data_unchanged(check, {"s": same})
    changed = {**same, f"{tracking.FINGERPRINT_PREFIX}test": "0" * 16}
    with pytest.raises(DataError, match="testset in .* changed since search 's' ran"):
        check_data_unchanged(check, {"s": changed})
    # a search that read another root is not compared
    check_data_unchanged(check, {"s": {**changed, tracking.DATA_ROOT: "/another/root"}})
