"""Device selection: CUDA when available (monkeypatched: no GPU needed), else CPU."""

import pytest
import torch

from odedit.device import pick_device, pick_dtype


def test_cuda_selected_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dev = pick_device()
    assert dev.type == "cuda"
    assert pick_dtype(dev) == torch.bfloat16


def test_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dev = pick_device()
    assert dev.type == "cpu"
    assert pick_dtype(dev) == torch.float32


def test_requesting_cuda_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")


def test_explicit_dtype_and_unknown_dtype():
    assert pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype(torch.device("cpu"), "float13")


def test_threads_one_for_tiny_models_unless_overridden(monkeypatch):
    from odedit.device import configure_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("ODEDIT_THREADS", raising=False)
        assert configure_threads(2_000_000, torch.device("cpu")) == 1
        monkeypatch.setenv("ODEDIT_THREADS", "2")
        assert configure_threads(2_000_000, torch.device("cpu")) == 2
    finally:
        torch.set_num_threads(before)
