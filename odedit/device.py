"""Device and dtype selection: CUDA (bf16) when present, else CPU (fp32)."""

from __future__ import annotations

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` wins ("cpu", "cuda", "cuda:1"); otherwise CUDA when available, else CPU."""
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available")
        return dev
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU, unless a dtype name is requested ("float32", "bfloat16", ...)."""
    if requested:
        dtype = getattr(torch, requested, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {requested!r}")
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


TINY_MODEL_PARAMS = 50_000_000


def configure_threads(n_params: int, device: torch.device) -> int:
    """Torch CPU threads: $ODEDIT_THREADS when set; else 1 for a tiny model (< 50M parameters:
    per-op overhead dominates, and a second thread only adds contention - measured 5x slower
    steps on a shared 2-core machine), else torch's default. Returns the count in force."""
    import os

    if device.type != "cpu":
        return torch.get_num_threads()
    env = os.environ.get("ODEDIT_THREADS")
    if env:
        torch.set_num_threads(max(1, int(env)))
    elif n_params < TINY_MODEL_PARAMS:
        torch.set_num_threads(1)
    return torch.get_num_threads()
