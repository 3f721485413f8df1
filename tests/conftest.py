"""Shared fixtures: tiny generated FFDI datasets of real JPEG files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ffdi_tune.data.demo import write_demo_dataset

# Keep every test (and the Ray workers it starts) to the machine's two cores, one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _private_cache():
    """The decode-once cache of every test (and of the Ray workers they start) stays out of
    ~/.cache."""
    folder = tempfile.mkdtemp(prefix="ffdi-test-cache-")
    os.environ["FFDI_TUNE_CACHE"] = folder
    yield
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """48 train, 24 val, 8 test portraits at 32 px."""
    root = tmp_path_factory.mktemp("data") / "ffdi"
    return write_demo_dataset(root, n_train=48, n_val=24, n_test=8, size=32, seed=3, difficulty=0.2)


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    """A private copy of ``tiny_data`` that a test may break."""
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    return root


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches; none of the machine's HF_HUB_OFFLINE, HF_ENDPOINT or
    proxies."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("https_proxy", "http_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    return tmp_path
