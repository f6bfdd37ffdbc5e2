"""One adapter over any image-text-to-text model loaded through transformers' Auto classes.

It owns: loading (local path or hub id, CUDA+bf16 when present else CPU+fp32), turning
(image, prompt, target) samples into teacher-forced batches, running the model down to the
last hidden state and the LM head (so editors can scale the hidden state, the IRM "dummy
classifier" of ODEdit), greedy answering, and naming the editable decoder modules.
What differs between model families is read from `odedit.models.families` (one table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from odedit.device import configure_threads, pick_device, pick_dtype
from odedit.models.families import Family, family_of, processor_from_parts

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Sample:
    """One teacher-forced example: optional image, a prompt and the target continuation."""

    prompt: str
    target: str
    image: Image.Image | None = None


@dataclass
class Encoded:
    """A tokenised batch: model inputs plus labels (-100 outside the target tokens).

    `prefix` optionally holds the hidden states entering decoder layer `prefix_layer`, computed
    once with every earlier module frozen (vision tower, projector, embeddings, lower layers).
    `attn` and `key` optionally hold what is frozen inside that layer when only its MLP's output
    projection is edited: its self-attention output and that projection's input (the keys)."""

    inputs: dict
    labels: torch.Tensor
    prefix: torch.Tensor | None = None
    prefix_layer: int = 0
    attn: torch.Tensor | None = None
    key: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


class ModelLoadError(ValueError):
    """A model or its processor cannot be loaded; the message is one line."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def load_processor(ref: str, model_type: str):
    """AutoProcessor, or for a family whose processor needs torchvision only for video, the same
    processor built from its image processor + tokenizer. Raises ModelLoadError (one line)."""
    try:
        return AutoProcessor.from_pretrained(ref)
    except Exception as exc:
        if not (family_of(model_type).video_needs_torchvision and Path(ref).is_dir()):
            raise ModelLoadError(f"cannot load the processor of {ref!r}: {_one_line(exc)}") from exc
        try:
            return processor_from_parts(ref)
        except Exception as exc2:
            raise ModelLoadError(f"cannot load the processor of {ref!r}: {_one_line(exc2)} "
                                 f"(AutoProcessor: {_one_line(exc)})") from exc2


# Probe images for counting image tokens: square, landscape and portrait (resolution-dependent
# processors such as LLaVA-NeXT's or Qwen2-VL's give each a different count).
PROBE_SIZES = ((336, 336), (640, 480), (480, 640))


def count_image_tokens(processor, model_type: str) -> int:
    """How many sequence positions one image takes, measured by running the processor on probe
    images (the most over `PROBE_SIZES`): tokens of (image + placeholder) minus tokens of the
    same text without the image."""
    fam = family_of(model_type)
    tok = processor.tokenizer
    text = fam.placeholder_format.format(image=getattr(processor, "image_token", "<image>"), prompt="") \
        if fam.placeholder == "prompt" else ""
    base = len(tok(fam.text_layout.format(bos=tok.bos_token or "", prompt=""))["input_ids"])
    most = 0
    for size in PROBE_SIZES:
        image = Image.new("RGB", size, (127, 127, 127))
        out = processor(text=[text], images=[[image]] if fam.nested_images else [image])
        most = max(most, len(out["input_ids"][0]) - base)
    return most


class _PrefixCaptured(Exception):
    """Stops a forward pass once the cached prefix has been captured."""


class _Inject(torch.nn.Module):
    """Stands in for the frozen lower decoder layers: returns the cached hidden states."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


class _CachedAttention(torch.nn.Module):
    """Stands in for the edited layer's self-attention (frozen: it sits below the edited
    projection): returns its cached output, as (output, weights) like the attention modules."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output, None


class _CachedKeysMLP(torch.nn.Module):
    """Stands in for the edited layer's MLP: only its output projection (the edited module, as it
    is now: a plain or a LoRA-wrapped linear) runs, on its cached input."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, *args, **kwargs):
        return self.run()


class _MLPAtPositions(torch.nn.Module):
    """Runs an MLP only at the positions some loss reads (flat indices into [B * T]); 0 elsewhere.
    For the top decoder layer, whose other positions reach nothing the caller reads (an MLP is per
    position)."""

    def __init__(self, mlp: torch.nn.Module, index: torch.Tensor):
        super().__init__()
        self.mlp = mlp
        self.index = index

    def forward(self, x, *args, **kwargs):
        return _at_positions(lambda part: self.mlp(part, *args, **kwargs), x, self.index)


def _rows_at(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [..., d] at the flat positions `index`: [len(index), d]."""
    return x.reshape(-1, x.shape[-1]).index_select(0, index)


def _at_positions(fn, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """fn (per position) applied to x [..., d] only at the flat positions `index`; 0 elsewhere."""
    part = fn(_rows_at(x, index))
    return part.new_zeros(x.shape[:-1].numel(), part.shape[-1]).index_copy(0, index, part).view(*x.shape[:-1], -1)


def _swapped(parent: torch.nn.Module, path: str, new: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.Module]:
    """Put `new` at `path` under `parent`; returns (owner, attribute, old) to put back."""
    owner_path, _, attr = path.rpartition(".")
    owner = parent.get_submodule(owner_path) if owner_path else parent
    old = getattr(owner, attr)
    setattr(owner, attr, new)
    return owner, attr, old


class MLLMAdapter:
    """Wraps a loaded model + processor. Construct with `MLLMAdapter.load(path_or_id)`."""

    def __init__(self, model, processor, device: torch.device, name: str = ""):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = device
        self.name = name
        self.family: Family = family_of(getattr(model.config, "model_type", ""))
        bos = self.tokenizer.bos_token_id
        probe = self.tokenizer("a")["input_ids"] if bos is not None else []
        self.tokenizer_adds_bos = bool(probe) and probe[0] == bos
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
            model = AutoModelForImageTextToText.from_pretrained(ref, dtype=dt)
        except Exception as exc:  # not found, not reachable on a hub, unsupported, broken
            raise ModelLoadError(f"cannot load model {ref!r}: {_one_line(exc)}") from exc
        processor = load_processor(ref, model.config.model_type)
        model.to(dev)
        configure_threads(sum(p.numel() for p in model.parameters()), dev)
        return cls(model, processor, dev, name=ref)

    # ------------------------------------------------------------------ prompts
    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", "<image>")

    def format_prompt(self, prompt: str, has_image: bool) -> str:
        """Chat template when the processor has one, else `<image> prompt` (embedded model), or
        the bare prompt where the processor inserts the image tokens itself. A template's own
        leading BOS is dropped when the tokenizer adds one (else the sequence has two)."""
        template = getattr(self.processor, "chat_template", None)
        if template:
            content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
            text = self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True
            )
            bos = self.tokenizer.bos_token
            if self.tokenizer_adds_bos and bos and text.startswith(bos):
                text = text[len(bos):]
            return text
        if has_image and self.family.placeholder == "prompt":
            return self.family.placeholder_format.format(image=self.image_token, prompt=prompt)
        return prompt

    # ------------------------------------------------------------------ encoding
    def _tokenise(self, texts: list[str], images: list[Image.Image] | None, suffixes: list[str] | None = None,
                  padding_side: str = "right"):
        """Processor call (tokenizer call for text-only inputs where the family's processor
        refuses them); with `suffixes` the processor's own labels (token_type_ids 1) mark them."""
        self.tokenizer.padding_side = padding_side  # right: positions of real tokens independent of batch
        fam = self.family
        if images is None and fam.text_only == "tokenizer":
            texts = [fam.text_layout.format(bos=self.tokenizer.bos_token or "", prompt=t) for t in texts]
            kwargs = {"return_tensors": "pt", "padding": True, "return_token_type_ids": suffixes is not None}
            if suffixes is not None:
                kwargs["text_pair"] = [s + (self.tokenizer.eos_token or "") for s in suffixes]
            out = dict(self.tokenizer(texts, **kwargs))
            if suffixes is not None:
                out["labels"] = torch.where(out["token_type_ids"] == 1, out["input_ids"], IGNORE_INDEX)
            return out
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if images is not None:
            kwargs["images"] = [[im] for im in images] if fam.nested_images else images
        if suffixes is not None:
            kwargs["suffix"] = suffixes
        return dict(self.processor(**kwargs))

    def encode(self, samples: Sequence[Sample], with_eos: bool = False) -> Encoded:
        """Teacher-forced batch. All samples must agree on having an image or not."""
        if not samples:
            raise ValueError("encode() needs at least one sample")
        has_image = samples[0].image is not None
        if any((s.image is not None) != has_image for s in samples):
            raise ValueError("a batch mixes image and text-only samples; encode them separately")
        images = [s.image.convert("RGB") for s in samples] if has_image else None
        prompts = [self.format_prompt(s.prompt, has_image) for s in samples]
        if self.family.labels == "suffix":
            return self._encode_suffix(prompts, [s.target for s in samples], images, with_eos)
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
        return Encoded(inputs=self._to_device(full), labels=labels.to(self.device))

    def _encode_suffix(self, prompts, targets, images, with_eos: bool) -> Encoded:
        """Labels from the processor's `suffix=` (PaliGemma): the target follows the prompt's
        own separator and is marked causal (token_type_ids 1), never part of the prefix."""
        out = self._tokenise(prompts, images, suffixes=targets)
        labels = torch.as_tensor(out.pop("labels")).clone()
        if not with_eos and self.tokenizer.eos_token_id is not None:  # the processor appends EOS
            labels[labels == self.tokenizer.eos_token_id] = IGNORE_INDEX
        labels[torch.as_tensor(out["attention_mask"]) == 0] = IGNORE_INDEX
        if ((labels != IGNORE_INDEX).sum(dim=1) == 0).any():
            raise ValueError("a sample's target produced no tokens")
        return Encoded(inputs=self._to_device(out), labels=labels.to(self.device))

    def _to_device(self, batch: dict) -> dict:
        inputs = {k: torch.as_tensor(v).to(self.device) for k, v in batch.items() if k != "labels"}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    # ------------------------------------------------------------------ forward
    @property
    def supports_prefix_cache(self) -> bool:
        return self.family.prefix_cache

    def _language_model(self):
        """The decoder stack (the module holding `.layers`): `get_decoder()` followed down."""
        module = self.model.get_decoder()
        for _ in range(4):
            if hasattr(module, "layers"):
                return module
            inner = module.get_decoder() if hasattr(module, "get_decoder") else None
            if inner is None or inner is module:
                break
            module = inner
        raise ValueError(f"cannot find the decoder layers of {type(self.model).__name__}")

    def _route(self, inputs: dict):
        """(module, its inputs): the whole model, or the language model alone (token ids and
        mask only) for text-only inputs of families whose multimodal forward needs pixels."""
        if self.family.text_only_language_model and "pixel_values" not in inputs:
            return self.model.language_model, {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}
        return self.model, inputs

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
            module, inputs = self._route(enc.inputs)
            module(**inputs, use_cache=False)
        except _PrefixCaptured:
            pass
        finally:
            handle.remove()
        return captured["x"]

    def cache_prefix(self, enc: Encoded, layer: int, inside: bool = False) -> Encoded:
        """`enc` plus the (frozen) hidden states entering decoder layer `layer`; later forwards
        of the result run only layers >= `layer`. A no-op where the model type is unsupported.
        `inside` (the edit changes only layer `layer`'s MLP output projection): also that layer's
        self-attention output and the projection's input, where the family allows
        (`Family.mlp_cache`); later forwards then run only that projection of the layer."""
        if not self.supports_prefix_cache or layer <= 0:
            return enc
        block = self.decoder_layers()[layer]
        if not (inside and self.family.mlp_cache):
            return Encoded(enc.inputs, enc.labels, self.module_input(enc, block), layer)
        seen = {}

        def grab_input(_module, args, kwargs):
            seen["prefix"] = (args[0] if args else kwargs["hidden_states"]).detach()

        def grab_attention(_module, _args, output):
            seen["attn"] = output[0].detach()

        handles = [block.register_forward_pre_hook(grab_input, with_kwargs=True),
                   block.self_attn.register_forward_hook(grab_attention)]
        try:
            key = self.module_input(enc, self.mlp_module(layer, "down_proj"))  # the pass stops there
        finally:
            for h in handles:
                h.remove()
        return Encoded(enc.inputs, enc.labels, seen["prefix"], layer, seen["attn"], key)

    def _decoder_from_prefix(self, enc: Encoded, index: torch.Tensor | None = None):
        """The decoder from the cached prefix. With the edited layer's insides cached, only its
        MLP output projection runs there; with `index` (flat [B * T] indices of the positions the
        caller reads), the top layer's MLP runs only at those (elsewhere the outputs are not the
        model's: speed only, where the family allows)."""
        lm = self._language_model()
        full = lm.layers
        swaps = []
        try:
            if enc.attn is not None:
                block = full[enc.prefix_layer]
                down, key = self.mlp_module(enc.prefix_layer, "down_proj"), enc.key
                swaps += [_swapped(block, "self_attn", _CachedAttention(enc.attn)),
                          _swapped(block, self.family.mlp, _CachedKeysMLP(lambda: down(key)))]
            top = len(full) - 1
            if index is not None and self.family.mlp_cache and top > enc.prefix_layer:
                mlp = full[top].get_submodule(self.family.mlp)
                swaps.append(_swapped(full[top], self.family.mlp, _MLPAtPositions(mlp, index)))
            lm.layers = torch.nn.ModuleList([_Inject(enc.prefix)] + list(full[enc.prefix_layer:]))
            return lm(inputs_embeds=torch.zeros_like(enc.prefix),
                      attention_mask=enc.inputs["attention_mask"], use_cache=False)
        finally:
            lm.layers = full
            for owner, attr, old in reversed(swaps):
                setattr(owner, attr, old)

    def hidden_and_logits(self, enc: Encoded, scale: torch.Tensor | None = None, raw: bool = False,
                          positions: torch.Tensor | None = None):
        """Last hidden state (optionally multiplied by `scale`; `raw` returns it unscaled, while
        the logits still see the scale) and the LM-head logits. The full forward is the model's
        own (whatever its family adds after the head, e.g. logit soft-capping, stays), with the
        hidden state taken (and scaled) at the LM head's input. `positions` ([B, T] bool): the
        only positions the caller reads; both are then returned only there, one row per position
        in row-major order ([N, d] and [N, V]), and on prefix-cached batches the LM head (and the
        top MLP, `_decoder_from_prefix`) run only there."""
        head = self.model.get_output_embeddings()
        index = None if positions is None else positions.reshape(-1).nonzero().squeeze(1)
        if enc.prefix is not None:
            hidden = self._decoder_from_prefix(enc, index).last_hidden_state
            scaled = hidden if scale is None else hidden * scale
            if index is None:
                return hidden if raw else scaled, head(scaled).float()
            part = _rows_at(scaled, index)  # the head too only where read
            return _rows_at(hidden, index) if raw and scale is not None else part, head(part).float()
        module, inputs = self._route(enc.inputs)
        # the head only at the positions read, where the family's forward takes the mask: the
        # head's input (and output) are then already one row per position, in row-major order
        masked = positions is not None and self.family.logits_mask and module is self.model
        if masked:
            inputs = {**inputs, "logits_to_keep": positions.to(torch.bool)}
            if scale is not None and scale.numel() > 1:  # a scale per row: per position's row
                scale = scale.reshape(-1)[index // positions.shape[-1]].unsqueeze(-1)
        seen = {}

        def at_head(_module, args):
            hidden = args[0] if scale is None else args[0] * scale
            seen["hidden"] = args[0] if raw else hidden
            return (hidden,) + tuple(args[1:])

        handle = head.register_forward_pre_hook(at_head)
        try:
            out = module(**inputs, use_cache=False)
        finally:
            handle.remove()
        if index is not None and not masked:
            return _rows_at(seen["hidden"], index), _rows_at(out.logits, index).float()
        return seen["hidden"], out.logits.float()

    def logits(self, enc: Encoded) -> torch.Tensor:
        return self.hidden_and_logits(enc)[1]

    def answer(self, prompt: str, image: Image.Image | None = None, max_new_tokens: int = 8) -> str:
        """Greedy answer to one prompt (decoded new tokens, special tokens stripped)."""
        return self.answers([(prompt, image)], max_new_tokens)[0]

    @torch.no_grad()
    def answers(self, items: Sequence[tuple[str, Image.Image | None]], max_new_tokens: int = 8,
                batch_size: int = 16) -> list[str]:
        """Greedy answers to many (prompt, image or None), generated in left-padded batches of one
        modality (speed only: each row attends to its own tokens, as when asked alone; one at a
        time where the family's `batch_generation` says a padded batch decodes otherwise)."""
        if not self.family.batch_generation:
            batch_size = 1
        out: list[str] = [""] * len(items)
        for has_image in (True, False):
            idx = [i for i, (_, im) in enumerate(items) if (im is not None) == has_image]
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                texts = [self.format_prompt(items[i][0], has_image) for i in part]
                images = [items[i][1].convert("RGB") for i in part] if has_image else None
                inputs = self._to_device(self._tokenise(texts, images, padding_side="left"))
                module, inputs = self._route(inputs)
                gen = module.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
                new = gen[:, inputs["input_ids"].shape[1]:]
                for row, i in enumerate(part):
                    out[i] = self.tokenizer.decode(new[row], skip_special_tokens=True).strip()
        return out

    # ------------------------------------------------------------------ editable modules
    def decoder_layers(self) -> torch.nn.ModuleList:
        return self._language_model().layers

    def num_layers(self) -> int:
        return len(self.decoder_layers())

    def mlp_module(self, layer: int, proj: str = "down_proj") -> torch.nn.Module:
        """Layer `layer`'s MLP projection `proj`, by its canonical (Llama) name or the family's own."""
        block = self.decoder_layers()[layer]
        mlp = block.get_submodule(self.family.mlp) if self.family.mlp else block
        name = self.family.proj_names.get(proj, proj)
        if not hasattr(mlp, name):
            raise ValueError(f"layer {layer} MLP has no {proj!r} (has {list(dict(mlp.named_children()))})")
        return getattr(mlp, name)

    def module_name(self, module: torch.nn.Module) -> str:
        for name, mod in self.model.named_modules():
            if mod is module:
                return name
        raise KeyError("module not in model")
