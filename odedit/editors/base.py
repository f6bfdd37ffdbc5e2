"""The base-editor interface: which parameters an edit trains and how they become weights."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from odedit.config import BaseEditorConfig
from odedit.models.adapter import MLLMAdapter


class BaseEditor(ABC):
    """A per-instance editor: `begin()` exposes trainable tensors, `end()` bakes them into
    the model's own weights and removes any scaffolding, `abort()` restores the base."""

    name: str = ""

    def __init__(self, adapter: MLLMAdapter, config: BaseEditorConfig):
        self.adapter = adapter
        self.config = config
        layer = config.layer if config.layer is not None else adapter.num_layers() // 2
        if not 0 <= layer < adapter.num_layers():
            raise ValueError(f"layer {layer} out of range (model has {adapter.num_layers()} decoder layers)")
        self.layer = layer
        self.module = adapter.mlp_module(layer, config.proj)
        self.module_name = adapter.module_name(self.module)

    def edited_parameter_names(self) -> list[str]:
        """Base-model parameters whose values the finished edit replaces."""
        return [f"{self.module_name}.weight"]

    @abstractmethod
    def begin(self) -> list[torch.nn.Parameter]: ...

    def after_step(self) -> None:
        """Hook after each optimiser step (constraints)."""

    @abstractmethod
    def end(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...
