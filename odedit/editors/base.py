"""The base-editor interface: which parameters an edit trains and how they become weights."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from odedit.config import BaseEditorConfig
from odedit.models.adapter import MLLMAdapter


def edited_layer(adapter: MLLMAdapter, config: BaseEditorConfig) -> int:
    """The decoder layer a base editor edits (default: the middle one)."""
    layer = config.layer if config.layer is not None else adapter.num_layers() // 2
    if not 0 <= layer < adapter.num_layers():
        raise ValueError(f"layer {layer} out of range (model has {adapter.num_layers()} decoder layers)")
    return layer


class BaseEditor(ABC):
    """A per-instance editor: `begin()` exposes trainable tensors, `end()` bakes them into
    the model's own weights and removes any scaffolding, `abort()` restores the base."""

    name: str = ""

    def __init__(self, adapter: MLLMAdapter, config: BaseEditorConfig):
        self.adapter = adapter
        self.config = config
        self.layer = edited_layer(adapter, config)
        self.module = adapter.mlp_module(self.layer, config.proj)
        self.module_name = adapter.module_name(self.module)
        # what after_step maps the update's input side by: the null-space projector (nullspace.py),
        # with the soft shrink before it when there is one; None: unconstrained
        self.side: torch.Tensor | None = None
        # soft_form "gradient": the soft metric C, whose pull (soft_decay / lr) Delta C joins the gradient
        self.soft_pull: torch.Tensor | None = None

    def constrain_to(self, projection: torch.Tensor | None, soft_metric: torch.Tensor | None = None) -> None:
        """Keep every update in the row space `projection` (in x in) maps onto; None lifts it.
        `soft_metric` (in x in, norm 1): after each step the update is also shrunk by
        `config.soft_decay` along it (before the projection, so the hard constraint holds), or, with
        `soft_form` "gradient", pulled along it by a gradient term (`pull`)."""
        dev, dt = self.module.weight.device, self.module.weight.dtype
        proj = None if projection is None else projection.to(dev, dt)
        self.side, self.soft_pull = proj, None
        if soft_metric is not None and self.config.soft_decay > 0 and self.config.soft_form == "gradient":
            self.soft_pull = soft_metric.to(dev, dt)
        elif soft_metric is not None and self.config.soft_decay > 0:
            eye = torch.eye(soft_metric.shape[0], dtype=soft_metric.dtype, device=soft_metric.device)
            shrink = (eye - self.config.soft_decay * soft_metric).to(dev, dt)
            # composed once here, not every step (an in x in product: ~1.3 TFLOP for a 7B down_proj)
            self.side = shrink if proj is None else shrink @ proj

    @property
    def only_mlp_output(self) -> bool:
        """The edit changes only its layer's MLP output projection: the rest of that layer is
        frozen, so a prefix cache may hold it too (`MLLMAdapter.cache_prefix(inside=True)`)."""
        return self.config.proj == "down_proj"

    def edited_parameter_names(self) -> list[str]:
        """Base-model parameters whose values the finished edit replaces."""
        return [f"{self.module_name}.weight"]

    @abstractmethod
    def begin(self) -> list[torch.nn.Parameter]: ...

    def after_step(self) -> None:
        """Hook after each optimiser step (constraints)."""

    def pulled(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(parameter, its update Delta) pairs the soft pull acts on (the input side of the change)."""
        return []

    def pull(self) -> None:
        """Before each optimiser step (after backward): add (soft_decay / lr) Delta C to the
        gradient of each `pulled` update, the soft shrink as a gradient term (`soft_form`)."""
        if self.soft_pull is None:
            return
        rate = self.config.soft_decay / self.config.lr
        with torch.no_grad():
            for p, delta in self.pulled():
                term = rate * (delta @ self.soft_pull)
                p.grad = term if p.grad is None else p.grad.add_(term)

    @abstractmethod
    def end(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...
