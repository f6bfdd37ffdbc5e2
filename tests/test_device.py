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
