"""Shared fixtures: the embedded model (loaded once per session) and world requests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest
import torch

torch.set_num_threads(1)  # the embedded model is tiny: see odedit.device.configure_threads


@pytest.fixture(scope="session")
def embedded_dir():
    from odedit.models.embedded import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def adapter(embedded_dir):
    from odedit.models.adapter import MLLMAdapter

    return MLLMAdapter.load(embedded_dir, device="cpu")


@pytest.fixture(scope="session")
def world(embedded_dir):
    from odedit.pools import world_of

    return world_of(embedded_dir)


@pytest.fixture(scope="session")
def world_requests(world, tmp_path_factory):
    """(image_root, requests): eight deterministic world edits."""
    root = tmp_path_factory.mktemp("world_images")
    return root, world.demo_requests(8, root, seed=0)


# ---------------------------------------------------------------- lifecycle (flows, faults)
@pytest.fixture(scope="session")
def harness(request):
    """One Prefect test harness (ephemeral API) for the whole session."""
    from odedit.lifecycle import fixtures

    return fixtures.prefect_harness(request)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny untrained world model (fast lifecycle tests)."""
    from odedit.lifecycle import fixtures

    return str(fixtures.tiny_world_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A fresh state directory (MLflow store, Prefect home, inbox) per test."""
    monkeypatch.setenv("ODEDIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ODEDIT_PROBE_COUNT", "6")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
