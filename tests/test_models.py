"""timm backbones: local weights files load; unreachable pretrained weights fail fast and clearly."""

from __future__ import annotations

import time

import pytest
import timm
import torch

from ffdi_tune.errors import ConfigError
from ffdi_tune.models import create_model


def test_local_weights_file_loads_and_head_is_replaced(tmp_path):
    src = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = create_model("resnet10t", str(path))
    assert model.num_classes == 2
    assert torch.equal(model.conv1[0].weight, src.conv1[0].weight)


def test_missing_weights_file():
    with pytest.raises(ConfigError, match="does not exist"):
        create_model("resnet10t", "/no/such/file.pth")


def test_wrong_weights_file(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), path)
    with pytest.raises(ConfigError, match="cannot load"):
        create_model("resnet10t", str(path))


def test_unreachable_hub_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    t = time.time()
    with pytest.raises(ConfigError, match="weights of resnet10t .*pretrained: false"):
        create_model("resnet10t", True)
    assert time.time() - t < 30  # no minutes of retries
