"""Building a trial's model: a timm backbone with a new two-class head, its settings checked."""

from __future__ import annotations

import pytest
import timm
import torch

from ffdi_tune.errors import ConfigError
from ffdi_tune.models.factory import check_backbone, check_weights, create_model
from ffdi_tune.models.weights import resolve_weights


def test_local_weights_file_loads_and_head_is_replaced(tmp_path):
    src = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = create_model("resnet10t", str(path))
    assert model.num_classes == 2
    assert torch.equal(model.conv1[0].weight, src.conv1[0].weight)
    assert resolve_weights("resnet10t", str(path)).source == "file"


def test_drop_path_rate_reaches_the_model_and_is_checked():
    model = create_model("resnet10t", drop_path_rate=0.2)
    assert any(type(m).__name__ == "DropPath" for m in model.modules())
    assert not any(type(m).__name__ == "DropPath" for m in create_model("resnet10t").modules())
    with pytest.raises(ConfigError, match="drop_path_rate: vgg11 does not take it"):
        check_weights({"vgg11": [False]}, {"vgg11": [0.1]}, echo=lambda line: None)


def test_drop_path_rate_is_checked_with_the_values_each_backbone_can_get():
    """A rate set for the search but unset for a backbone that cannot take it, as the error
    advises, passes the pre-check."""
    from ffdi_tune.config import parse_search_config
    from ffdi_tune.search.setup import prepare_data

    space = {
        "name": "rates",
        "data": {"root": "/no/such/data"},
        "train": {"backbone": "resnet10t", "drop_path_rate": 0.1},
        "space": {"backbone": {"choice": ["resnet10t", "vgg11"]}},
    }
    with pytest.raises(ConfigError, match="drop_path_rate: vgg11 does not take it"):
        prepare_data(parse_search_config(space), echo=lambda line: None)
    space["per_backbone"] = {"vgg11": {"drop_path_rate": None}}
    # past the weights: it is the data that is missing now
    with pytest.raises(Exception, match="/no/such/data") as err:
        prepare_data(parse_search_config(space), echo=lambda line: None)
    assert "drop_path_rate" not in str(err.value)


def test_input_modes_wrap_the_backbone_and_an_unknown_one_names_the_close_ones():
    from ffdi_tune.models.srm import SrmInput

    model = create_model("resnet10t", input_mode="rgb+srm")
    assert isinstance(model, SrmInput) and model.num_classes == 2
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
    with pytest.raises(
        ConfigError, match=r"unknown input mode 'rgb\+srn' \(did you mean 'rgb\+srm'"
    ):
        create_model("resnet10t", input_mode="rgb+srn")


def test_unknown_backbone_names_the_close_ones():
    check_backbone("test_efficientnet")
    with pytest.raises(
        ValueError, match=r"unknown timm backbone 'resnet10tt' \(did you mean 'resnet10t'"
    ):
        check_backbone("resnet10tt")


def test_check_weights_loads_every_pair_once_and_says_where_each_came_from(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    lines = []
    resolved = check_weights(
        {"test_efficientnet": [False, str(path), False], "resnet10t": [False]}, echo=lines.append
    )
    assert resolved[("test_efficientnet", False)].source == "none"
    assert resolved[("test_efficientnet", str(path))].source == "file"
    assert set(resolved) == {
        ("test_efficientnet", False),
        ("test_efficientnet", str(path)),
        ("resnet10t", False),
    }
    assert lines == [
        f"weights: test_efficientnet from file {path.resolve()} (sha256 "
        f"{resolved[('test_efficientnet', str(path))].sha256[:12]})"
    ]
