"""Timing probes on a real tiny timm model, kept per machine."""

from __future__ import annotations

import json

import pytest

from ffdi_tune.search.probe import PROBE_FILE, ProbeResult, probe, probe_cached
from ffdi_tune.training.settings import TrainSettings

TINY = TrainSettings(backbone="resnet10t", img_size=32, batch_size=8)


@pytest.fixture
def short_probes(monkeypatch):
    """probe_cached's probes cut to a few steps: these tests are about what is kept."""
    import functools

    from ffdi_tune.search import probe as probe_module

    monkeypatch.setattr(probe_module, "probe", functools.partial(probe, steps=2, max_seconds=0.5))


def test_a_probe_times_training_and_scoring():
    result = probe(TINY, steps=3, max_seconds=2)
    assert result.batch_size == 8
    assert result.train_step_s > 0 and result.eval_image_s > 0 and result.checkpoint_s > 0
    # an epoch: every whole training batch, then each scored image, then its checkpoint
    assert result.epoch_s(80, 20) == pytest.approx(
        10 * result.train_step_s + 20 * result.eval_image_s + result.checkpoint_s
    )


def test_the_checkpoint_is_timed_where_it_is_asked_to_be_and_cleaned_up(tmp_path):
    probe(TINY, steps=1, max_seconds=1, folder=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_probe_kept_by_an_older_version_is_probed_again(tmp_path, short_probes):
    from ffdi_tune.search.probe import PROBE_VERSION, _key

    older = _key(TINY).replace(f"{PROBE_VERSION}|", "1|", 1)
    (tmp_path / PROBE_FILE).write_text(
        json.dumps({older: {"train_step_s": 9.0, "eval_image_s": 9.0, "batch_size": 8}})
    )
    said = []
    result = probe_cached(TINY, tmp_path, echo=said.append)
    assert said and result.train_step_s < 9.0


def test_a_probe_is_kept_and_reused_on_the_same_machine(tmp_path, short_probes):
    said = []
    first = probe_cached(TINY, tmp_path, echo=said.append)
    kept = json.loads((tmp_path / PROBE_FILE).read_text())
    assert len(kept) == 1 and said == ["probe: timing resnet10t at 32 px ..."]
    again = probe_cached(TINY, tmp_path, echo=said.append)
    assert again == first and len(said) == 1  # no second probe
    # another size is another probe
    probe_cached(TINY.model_copy(update={"img_size": 48}), tmp_path, echo=said.append)
    assert len(json.loads((tmp_path / PROBE_FILE).read_text())) == 2 and len(said) == 2


def test_a_damaged_probe_file_is_probed_again(tmp_path, short_probes):
    (tmp_path / PROBE_FILE).write_text("{not json")
    result = probe_cached(TINY, tmp_path, echo=lambda _: None)
    assert isinstance(result, ProbeResult)
    assert len(json.loads((tmp_path / PROBE_FILE).read_text())) == 1
