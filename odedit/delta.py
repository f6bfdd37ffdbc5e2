"""Compact edit deltas: only the tensors an edit changed, stored as their edited values.

Applying a delta copies the edited values into the model; removing it copies back the exact
original values stashed at apply time, so removal restores the base bit for bit (an additive
float diff would not). Each tensor carries a fingerprint of the base value it replaces, so a
delta refuses to apply to a different base.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DELTA_TENSORS = "delta.safetensors"
DELTA_META = "delta.json"


def fingerprint(t: torch.Tensor) -> str:
    data = t.detach().to("cpu").contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()[:16]


@dataclass
class Delta:
    tensors: dict[str, torch.Tensor]  # parameter name -> edited value
    base_fingerprints: dict[str, str]  # parameter name -> fingerprint of the replaced base value
    meta: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, str(d / DELTA_TENSORS))
        (d / DELTA_META).write_text(json.dumps(
            {"base_fingerprints": self.base_fingerprints, "meta": self.meta}, indent=2, default=str))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Delta":
        d = Path(directory)
        meta = json.loads((d / DELTA_META).read_text())
        return cls(load_file(str(d / DELTA_TENSORS)), meta["base_fingerprints"], meta.get("meta", {}))

    def compose(self, later: "Delta") -> "Delta":
        """`later` applied on top of `self`, as one delta relative to `self`'s base."""
        tensors = dict(self.tensors) | dict(later.tensors)
        prints = dict(later.base_fingerprints) | dict(self.base_fingerprints)
        return Delta(tensors, prints, {"composed": [self.meta, later.meta]})


@dataclass
class AppliedDelta:
    """What `apply_delta` replaced, so `remove_delta` can restore it exactly."""

    originals: dict[str, torch.Tensor]


def _params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def snapshot(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = _params(model)
    return {n: params[n].detach().clone() for n in names}


def delta_from(model: torch.nn.Module, originals: dict[str, torch.Tensor], meta: dict | None = None) -> Delta:
    """The delta between `originals` (base values) and the model's current values of the same names."""
    params = _params(model)
    tensors = {n: params[n].detach().to("cpu").clone() for n in originals}
    return Delta(tensors, {n: fingerprint(t) for n, t in originals.items()}, meta or {})


def apply_delta(model: torch.nn.Module, delta: Delta, check: bool = True) -> AppliedDelta:
    params = _params(model)
    missing = [n for n in delta.tensors if n not in params]
    if missing:
        raise KeyError(f"delta names parameters the model lacks: {missing}")
    originals = {}
    for name, value in delta.tensors.items():
        p = params[name]
        if check and fingerprint(p) != delta.base_fingerprints.get(name):
            raise ValueError(f"delta was made for another base: parameter {name} differs")
        if tuple(p.shape) != tuple(value.shape):
            raise ValueError(f"delta shape {tuple(value.shape)} != parameter {name} {tuple(p.shape)}")
        originals[name] = p.detach().clone()
        with torch.no_grad():
            p.copy_(value.to(p.device, p.dtype))
    return AppliedDelta(originals)


def remove_delta(model: torch.nn.Module, applied: AppliedDelta) -> None:
    params = _params(model)
    with torch.no_grad():
        for name, value in applied.originals.items():
            params[name].copy_(value)
