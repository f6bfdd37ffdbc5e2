"""FT-L: fine-tune one decoder layer's MLP projection (EasyEdit's FT with a single layer)."""

from __future__ import annotations

import torch

from odedit.editors.base import BaseEditor


class FTLEditor(BaseEditor):
    name = "ft-l"

    def begin(self) -> list[torch.nn.Parameter]:
        weight = self.module.weight
        self._original = weight.detach().clone()
        weight.requires_grad_(True)
        return [weight]

    def pulled(self):
        w = self.module.weight
        return [(w, w.detach() - self._original)]

    def after_step(self) -> None:
        w = self.module.weight
        side = self.side
        with torch.no_grad():
            if side is not None:  # the change acts only on keys outside the preserved span
                w.copy_(self._original + (w - self._original) @ side)
            eps = self.config.norm_constraint
            if eps is not None:  # EasyEdit FT: keep every weight within eps of its original value
                w.copy_(torch.clamp(w, self._original - eps, self._original + eps))

    def end(self) -> None:
        self.module.weight.requires_grad_(False)

    def abort(self) -> None:
        with torch.no_grad():
            self.module.weight.copy_(self._original)
        self.end()
