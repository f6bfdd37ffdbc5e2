"""The limits a batch is validated against (`ValidationLimits`): token budgets of the model,
hard character caps, and image byte / pixel caps. Built from a model directory
(`ValidationLimits.from_model`) or given directly (tests, `--max-*-tokens` flags).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]")

# bos + eos around prompt and target
SPECIAL_TOKEN_OVERHEAD = 2


def approx_token_counts(texts: Sequence[str]) -> list[int]:
    """Word-and-punctuation count: what a word-level tokenizer (the embedded model's) gives,
    and a lower bound for subword tokenizers. Used when no tokenizer is available."""
    return [len(_APPROX_TOKEN.findall(t)) for t in texts]


@dataclass(frozen=True)
class ValidationLimits:
    """Budgets a request must fit. Token limits count text tokens only (image tokens and
    special tokens are already subtracted when derived from a model)."""

    max_prompt_tokens: int = 96
    max_target_tokens: int = 16
    max_text_chars: int = 4000
    max_image_bytes: int = 32 * 2**20
    max_image_pixels: int = 36_000_000  # e.g. 6000x6000; PIL's own bomb guard is ~89 MP
    context_length: int | None = None
    image_tokens: int = 0
    source: str = "defaults"
    count_tokens: Callable[[Sequence[str]], list[int]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.max_prompt_tokens < 1 or self.max_target_tokens < 1:
            raise ValueError(f"token limits must be >= 1 (prompt {self.max_prompt_tokens}, target {self.max_target_tokens})")

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return list((self.count_tokens or approx_token_counts)(list(texts)))

    def with_overrides(self, **kwargs) -> "ValidationLimits":
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def to_dict(self) -> dict:
        return {
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_target_tokens": self.max_target_tokens,
            "max_text_chars": self.max_text_chars,
            "max_image_bytes": self.max_image_bytes,
            "max_image_pixels": self.max_image_pixels,
            "context_length": self.context_length,
            "image_tokens": self.image_tokens,
            "source": self.source,
            "tokenizer": "model" if self.count_tokens else "approximate (words + punctuation)",
        }

    @classmethod
    def from_model(cls, model_path: str | Path, max_target_tokens: int | None = None,
                   max_prompt_tokens: int | None = None, **kwargs) -> "ValidationLimits":
        """Limits from a model directory: its tokenizer counts tokens, the text config's
        `max_position_embeddings` is the context; an image takes as many positions as the
        model's processor gives probe images (`adapter.count_image_tokens`; the estimate
        (image_size/patch_size)^2 only where the processor cannot be loaded).
        Prompt budget = context - image tokens - target budget - bos/eos."""
        from transformers import AutoConfig, AutoTokenizer

        path = str(model_path)
        tok = AutoTokenizer.from_pretrained(path)
        cfg = AutoConfig.from_pretrained(path)
        text_cfg = getattr(cfg, "text_config", None) or cfg
        context = int(getattr(text_cfg, "max_position_embeddings"))
        vision = getattr(cfg, "vision_config", None)
        image_tokens, counted = 0, False
        if vision is not None:
            try:
                from odedit.models.adapter import count_image_tokens, load_processor

                image_tokens = count_image_tokens(load_processor(path, cfg.model_type), cfg.model_type)
                counted = True
            except Exception:  # no usable processor: estimate from the vision config
                pass
        if not counted and vision is not None and getattr(vision, "image_size", None) \
                and getattr(vision, "patch_size", None):
            image_tokens = (int(vision.image_size) // int(vision.patch_size)) ** 2
        target = max_target_tokens or max(1, min(32, context // 8))
        prompt = max_prompt_tokens or context - image_tokens - target - SPECIAL_TOKEN_OVERHEAD
        if prompt < 1:
            raise ValueError(f"{path}: context {context} leaves no room for a prompt "
                             f"(image {image_tokens}, target {target})")

        def count(texts: Sequence[str]) -> list[int]:
            return [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]

        return cls(max_prompt_tokens=prompt, max_target_tokens=target, context_length=context,
                   image_tokens=image_tokens, source=f"model:{path}", count_tokens=count, **kwargs)
