"""The ``train:`` settings: their checks, YAML's bare on / off, searched JPEG ranges and the
evaluation size."""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml
from pydantic import ValidationError

from ffdi_tune.config import parse_search_config
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import ConfigError
from ffdi_tune.search.space import DefineByRun, trial_settings
from ffdi_tune.training.checkpoint import BEST_FILE
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import train_trial


def test_eval_size_is_eval_img_size_or_img_size():
    assert TrainSettings(img_size=64).eval_size == 64
    assert TrainSettings(img_size=64, eval_img_size=96).eval_size == 96


def test_mix_needs_an_even_batch():
    with pytest.raises(ValidationError, match="batch_size must be even, but got 31"):
        TrainSettings(mix="cutmix", batch_size=31)
    assert TrainSettings(mix="none", batch_size=31).batch_size == 31


def test_a_searched_jpeg_range_arrives_as_its_json_label():
    assert TrainSettings(jpeg_quality="[20, 40]").jpeg_quality == (20, 40)
    with pytest.raises(ValidationError, match="jpeg_quality"):
        TrainSettings(jpeg_quality="[40, 20]")


def test_device_augment_reads_bare_yaml_on_and_off():
    for text, want in [
        ("on", "on"),
        ("off", "off"),
        ("auto", "auto"),
        ("true", "on"),
        ("'on'", "on"),
    ]:
        assert TrainSettings(**yaml.safe_load(f"device_augment: {text}")).device_augment == want
    with pytest.raises(ValueError, match="device_augment"):
        TrainSettings(device_augment="gpu")


def test_jpeg_keys_are_searchable_and_train(tiny_data):
    cfg = parse_search_config(
        {
            "name": "j",
            "data": {"root": str(tiny_data)},
            "train": {"augment": "jpeg"},
            "space": {
                "jpeg_quality": {"choice": [[20, 40], [70, 95]]},
                "jpeg_p": {"uniform": [0.2, 0.9]},
            },
        }
    )
    fn = DefineByRun.from_config(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        fn(trial)
        s = trial_settings(cfg.train, trial.params)
        assert s.jpeg_quality in ((20, 40), (70, 95)) and 0.2 <= s.jpeg_p <= 0.9
        seen.add(s.jpeg_quality)
        study.tell(trial, 0.5)
    assert len(seen) == 2
    reports = []
    s = TrainSettings(
        backbone="test_resnet",
        img_size=32,
        batch_size=8,
        epochs=1,
        augment="jpeg",
        jpeg_quality=(20, 40),
        jpeg_p=1.0,
    )
    train_trial(
        s,
        DataConfig(root=str(tiny_data)),
        lambda m, folder: reports.append((m, torch.load(folder / BEST_FILE, weights_only=True))),
    )
    metrics, best = reports[-1]
    assert best["settings"]["jpeg_quality"] == (20, 40)
    assert best["metrics"] | {"weights_kept": best["weights_kind"]} == metrics


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"jpeg_quality": [50, 20]}, "jpeg_quality must be"),
        ({"jpeg_quality": [0, 20]}, "jpeg_quality must be"),
        ({"jpeg_p": 1.5}, "jpeg_p"),
        ({"input": "srm"}, "input"),
        ({"eval_img_size": 8}, "eval_img_size"),
    ],
)
def test_bad_recipe_option_values(bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_search_config({"name": "b", "data": {"root": "/d"}, "train": bad}, "x.yaml")


def test_crop_decodes_at_its_cache_side_which_must_hold_the_crops():
    from pydantic import ValidationError

    squash = TrainSettings(img_size=64, eval_img_size=96)
    assert (squash.decode_size, squash.eval_decode_size) == (64, 96)
    crop = TrainSettings(img_size=64, eval_img_size=96, resize="crop")
    assert crop.decode_size == crop.eval_decode_size == 120  # 1.25 x the larger side
    assert TrainSettings(img_size=448, resize="crop", cache_size=512).decode_size == 512
    with pytest.raises(ValidationError, match="cache_size=400 is smaller than the 448 px crops"):
        TrainSettings(img_size=448, resize="crop", cache_size=400)
