"""One adapter over any image-text-to-text model loaded through transformers' Auto classes.

It owns: loading (local path or hub id, CUDA+bf16 when present else CPU+fp32), turning
(image, prompt, target) samples into teacher-forced batches, running the model down to the
last hidden state and the LM head (so editors can scale the hidden state, the IRM "dummy
classifier" of ODEdit), greedy answering, and naming the editable decoder modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from odedit.device import configure_threads, pick_device, pick_dtype

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Sample:
    """One teacher-forced example: optional image, a prompt and the target continuation."""

    prompt: str
    target: str
    image: Image.Image | None = None


# Model types whose decoder takes plain sequential positions, so a batch may enter the decoder
# mid-way from cached hidden states (see `MLLMAdapter.cache_prefix`). Others (e.g. Qwen2-VL's
# multimodal rotary positions) always take the full forward path.
PREFIX_CACHE_MODEL_TYPES = {"llava", "llava_next", "idefics3", "smolvlm", "idefics2"}


@dataclass
class Encoded:
    """A tokenised batch: model inputs plus labels (-100 outside the target tokens).

    `prefix` optionally holds the hidden states entering decoder layer `prefix_layer`, computed
    once with every earlier module frozen (vision tower, projector, embeddings, lower layers)."""

    inputs: dict
    labels: torch.Tensor
    prefix: torch.Tensor | None = None
    prefix_layer: int = 0

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


class ModelLoadError(ValueError):
    pass


class _PrefixCaptured(Exception):
    """Stops a forward pass once the cached prefix has been captured."""


class _Inject(torch.nn.Module):
    """Stands in for the frozen lower decoder layers: returns the cached hidden states."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


class MLLMAdapter:
    """Wraps a loaded model + processor. Construct with `MLLMAdapter.load(path_or_id)`."""

    def __init__(self, model, processor, device: torch.device, name: str = ""):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = device
        self.name = name
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path_or_id: str | Path, device: str | None = None, dtype: str | None = None):
        dev = pick_device(device)
        dt = pick_dtype(dev, dtype)
        ref = str(path_or_id)
        looks_local = ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists()
        if looks_local and not Path(ref).expanduser().is_dir():
            raise ModelLoadError(f"model path does not exist: {ref}")
        try:
            processor = AutoProcessor.from_pretrained(ref)
            model = AutoModelForImageTextToText.from_pretrained(ref, dtype=dt)
        except OSError as exc:  # not found locally and not reachable on a hub
            raise ModelLoadError(f"cannot load model {ref!r}: {exc}") from exc
        model.to(dev)
        configure_threads(sum(p.numel() for p in model.parameters()), dev)
        return cls(model, processor, dev, name=ref)

    # ------------------------------------------------------------------ prompts
    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", "<image>")

    def format_prompt(self, prompt: str, has_image: bool) -> str:
        """Chat template when the processor has one, else `<image> prompt` (embedded model)."""
        template = getattr(self.processor, "chat_template", None)
        if template:
            content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True
            )
        return f"{self.image_token} {prompt}" if has_image else prompt

    # ------------------------------------------------------------------ encoding
    def _tokenise(self, texts: list[str], images: list[Image.Image] | None):
        self.tokenizer.padding_side = "right"  # positions of real tokens independent of batch
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if images is not None:
            kwargs["images"] = images
        return self.processor(**kwargs)

    def encode(self, samples: Sequence[Sample], with_eos: bool = False) -> Encoded:
        """Teacher-forced batch. All samples must agree on having an image or not."""
        if not samples:
            raise ValueError("encode() needs at least one sample")
        has_image = samples[0].image is not None
        if any((s.image is not None) != has_image for s in samples):
            raise ValueError("a batch mixes image and text-only samples; encode them separately")
        images = [s.image.convert("RGB") for s in samples] if has_image else None
        prompts = [self.format_prompt(s.prompt, has_image) for s in samples]
        eos = self.tokenizer.eos_token or "" if with_eos else ""
        fulls = [f"{p} {s.target}{(' ' + eos) if eos else ''}" for p, s in zip(prompts, samples)]
        full = self._tokenise(fulls, images)
        prompt_only = self._tokenise(prompts, images)
        prompt_lens = prompt_only["attention_mask"].sum(dim=1)
        full_lens = full["attention_mask"].sum(dim=1)
        labels = full["input_ids"].clone()
        positions = torch.arange(labels.shape[1]).unsqueeze(0)
        keep = (positions >= prompt_lens.unsqueeze(1)) & (positions < full_lens.unsqueeze(1))
        labels[~keep] = IGNORE_INDEX
        if (keep.sum(dim=1) == 0).any():
            raise ValueError("a sample's target produced no tokens")
        inputs = {k: v.to(self.device) for k, v in full.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return Encoded(inputs=inputs, labels=labels.to(self.device))

    # ------------------------------------------------------------------ forward
    @property
    def supports_prefix_cache(self) -> bool:
        return getattr(self.model.config, "model_type", "") in PREFIX_CACHE_MODEL_TYPES

    def _language_model(self):
        return self.model.model.language_model

    @torch.no_grad()
    def module_input(self, enc: Encoded, module: torch.nn.Module) -> torch.Tensor:
        """The (first) input `module` receives in a forward pass of `enc`; the pass stops there,
        so nothing above `module` runs."""
        captured = {}

        def grab(_module, args, kwargs):
            captured["x"] = (args[0] if args else kwargs["hidden_states"]).detach()
            raise _PrefixCaptured

        handle = module.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model.model(**enc.inputs, use_cache=False)
        except _PrefixCaptured:
            pass
        finally:
            handle.remove()
        return captured["x"]

    def cache_prefix(self, enc: Encoded, layer: int) -> Encoded:
        """`enc` plus the (frozen) hidden states entering decoder layer `layer`; later forwards
        of the result run only layers >= `layer`. A no-op where the model type is unsupported."""
        if not self.supports_prefix_cache or layer <= 0:
            return enc
        return Encoded(enc.inputs, enc.labels, self.module_input(enc, self.decoder_layers()[layer]), layer)

    def _decoder_from_prefix(self, enc: Encoded):
        lm = self._language_model()
        full = lm.layers
        lm.layers = torch.nn.ModuleList([_Inject(enc.prefix)] + list(full[enc.prefix_layer:]))
        try:
            return lm(inputs_embeds=torch.zeros_like(enc.prefix),
                      attention_mask=enc.inputs["attention_mask"], use_cache=False)
        finally:
            lm.layers = full

    def hidden_and_logits(self, enc: Encoded, scale: torch.Tensor | None = None):
        """Last hidden state (optionally multiplied by `scale`) and the LM-head logits."""
        if enc.prefix is not None:
            out = self._decoder_from_prefix(enc)
        else:
            out = self.model.model(**enc.inputs, use_cache=False)
        hidden = out.last_hidden_state
        if scale is not None:
            hidden = hidden * scale
        logits = self.model.get_output_embeddings()(hidden)
        return hidden, logits.float()

    def logits(self, enc: Encoded) -> torch.Tensor:
        return self.hidden_and_logits(enc)[1]

    @torch.no_grad()
    def answer(self, prompt: str, image: Image.Image | None = None, max_new_tokens: int = 8) -> str:
        """Greedy answer to one prompt (decoded new tokens, special tokens stripped)."""
        self.tokenizer.padding_side = "left"
        text = self.format_prompt(prompt, image is not None)
        kwargs = {"text": [text], "return_tensors": "pt"}
        if image is not None:
            kwargs["images"] = [image.convert("RGB")]
        inputs = {k: v.to(self.device) for k, v in self.processor(**kwargs).items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ editable modules
    def decoder_layers(self) -> torch.nn.ModuleList:
        return self.model.get_decoder().layers

    def num_layers(self) -> int:
        return len(self.decoder_layers())

    def mlp_module(self, layer: int, proj: str = "down_proj") -> torch.nn.Module:
        mlp = self.decoder_layers()[layer].mlp
        if not hasattr(mlp, proj):
            raise ValueError(f"layer {layer} MLP has no {proj!r} (has {list(dict(mlp.named_children()))})")
        return getattr(mlp, proj)

    def module_name(self, module: torch.nn.Module) -> str:
        for name, mod in self.model.named_modules():
            if mod is module:
                return name
        raise KeyError("module not in model")
