"""LoRA (peft) on one decoder layer's MLP projection; merged into the weight when the edit ends,
so its delta has the same form as FT-L's (the replaced weight)."""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model

from odedit.editors.base import BaseEditor


class LoRAEditor(BaseEditor):
    name = "lora"

    def begin(self) -> list[torch.nn.Parameter]:
        self._original = self.module.weight.detach().clone()
        cfg = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=0.0,
            target_modules=[self.module_name],
            bias="none",
        )
        inject_adapter_in_model(cfg, self.adapter.model)
        self._lora = self.adapter.model.get_submodule(self.module_name)
        params = [p for n, p in self._lora.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        return params

    def pulled(self):
        return [(p, p.detach()) for name, p in self._lora.named_parameters() if "lora_A" in name]

    def after_step(self) -> None:
        side = self.side
        if side is not None:  # Delta = B A: projecting A's input side projects Delta
            with torch.no_grad():
                for name, p in self._lora.named_parameters():
                    if "lora_A" in name:
                        p.copy_(p @ side)

    def _unwrap(self, merge: bool) -> None:
        if merge:
            self._lora.merge()
        base = self._lora.get_base_layer()
        parent_name, _, child = self.module_name.rpartition(".")
        setattr(self.adapter.model.get_submodule(parent_name), child, base)
        base.weight.requires_grad_(False)
        self.module = base
        if hasattr(self.adapter.model, "peft_config"):  # left by inject_adapter_in_model
            del self.adapter.model.peft_config

    def end(self) -> None:
        self._unwrap(merge=True)

    def abort(self) -> None:
        self._unwrap(merge=False)
        with torch.no_grad():
            self.module.weight.copy_(self._original)
