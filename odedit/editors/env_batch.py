"""All samples of an edit's environments packed into one forward pass per modality
(image / text-only), with the rows each environment owns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from odedit.environments import Environment
from odedit.models.adapter import Encoded, MLLMAdapter


@dataclass
class EnvRows:
    env: Environment
    group: str  # "image" | "text"
    rows: torch.Tensor  # row indices in that group's batch


class EnvBatch:
    def __init__(self, adapter: MLLMAdapter, envs: list[Environment], with_eos: bool = False):
        samples = {"image": [], "text": []}
        self.rows: list[EnvRows] = []
        for env in envs:
            by_group = {"image": [], "text": []}
            for s in env.samples:
                group = "image" if s.image is not None else "text"
                by_group[group].append(len(samples[group]))
                samples[group].append(s)
            for group, idx in by_group.items():
                if idx:
                    self.rows.append(EnvRows(env, group, torch.tensor(idx)))
        self.encoded: dict[str, Encoded] = {
            g: adapter.encode(s, with_eos=with_eos) for g, s in samples.items() if s
        }

    def forward(self, adapter: MLLMAdapter, scale: torch.Tensor | None = None):
        """{group: (hidden, logits)} for every non-empty group."""
        return {g: adapter.hidden_and_logits(enc, scale) for g, enc in self.encoded.items()}
