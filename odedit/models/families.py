"""The model-family table: what differs between image-text-to-text families, as data.

It owns one `Family` record per supported `config.model_type` (plus the default used for any
other type): where the decoder layers and the edited MLP projections are, how images and
image placeholders reach the processor, how labels are built, where the BOS token comes
from, whether the prefix cache applies (and inside the edited layer), how text-only inputs run,
whether the processor must be built from its image processor + tokenizer (families whose
processor only needs torchvision for video), and whether prompts can be answered in one padded
batch.
`odedit.models.adapter.MLLMAdapter` reads these facts; it has no per-family branches of its own.
How each family was tested: README, "Supported model families".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str
    # decoder layers: `model.get_decoder()` followed down until a module with `.layers`
    # MLP container inside a decoder layer ("" = the layer itself, as in OPT)
    mlp: str = "mlp"
    # canonical projection name (EasyEdit's, Llama's) -> this family's module name
    proj_names: dict = field(default_factory=dict)
    # images passed as one list per sample ([[img], [img]]) instead of a flat list
    nested_images: bool = False
    # who writes the image placeholder: "prompt" (odedit / the chat template) or "processor"
    # (it inserts the image / query tokens itself; the prompt must not carry one)
    placeholder: str = "prompt"
    placeholder_format: str = "{image} {prompt}"  # where odedit writes it (no chat template)
    # labels: "span" (tokens after the prompt in prompt + " " + target) or "suffix"
    # (the processor's `suffix=`, which marks target tokens with token_type_ids = 1)
    labels: str = "span"
    # where BOS comes from: "tokenizer" (a template's own leading BOS is then dropped),
    # "template" (the chat template writes it, the tokenizer adds none), "processor"
    # (the processor inserts it after the image tokens), "none" (the family has no BOS)
    bos: str = "tokenizer"
    # the decoder can be entered mid-way from cached hidden states (plain 1-D positions and a
    # plain causal mask; multimodal rotary positions or bidirectional image masks cannot)
    prefix_cache: bool = False
    # with the prefix cache, when an edit changes only a layer's MLP output projection: that
    # layer's self-attention output and the projection's input are cached too, and the top layer's
    # MLP runs only at the positions a loss reads (a Llama-style layer: `self_attn` returning
    # (output, weights), then the MLP at `mlp` ending in its output projection; tested per family)
    mlp_cache: bool = False
    # the model's forward takes `logits_to_keep` as a [B, T] bool mask (transformers'
    # `slice_logits_to_keep`): without the prefix cache, the LM head runs only at the positions a
    # loss reads (on a 152k-token vocabulary the head is a step's largest product; tested per family)
    logits_mask: bool = False
    # text-only inputs: "processor" (the processor takes text alone), "tokenizer" (the processor
    # refuses text without images: tokenise `text_layout` with the tokenizer instead)
    text_only: str = "processor"
    text_layout: str = "{prompt}"
    # text-only forwards run the language model alone (the multimodal forward needs pixels)
    text_only_language_model: bool = False
    # AutoProcessor needs torchvision only for the video processor: build the processor from
    # its image processor + tokenizer when AutoProcessor cannot load
    video_needs_torchvision: bool = False
    # greedy generation of many prompts in one left-padded batch gives each the answer it gets
    # alone (tested per family); False: `answers` asks one prompt at a time (PaliGemma's
    # text-only prompts decode otherwise when padded)
    batch_generation: bool = True


_LLAVA = dict(prefix_cache=True, mlp_cache=True, logits_mask=True)
_IDEFICS = dict(nested_images=True, prefix_cache=True, mlp_cache=True, logits_mask=True)
_QWEN = dict(bos="none", video_needs_torchvision=True, logits_mask=True)
_BLIP = dict(mlp="", proj_names={"down_proj": "fc2", "up_proj": "fc1"}, placeholder="processor",
             prefix_cache=True, text_only_language_model=True)

FAMILIES: dict[str, Family] = {
    "llava": Family("LLaVA-1.5", **_LLAVA),
    "llava_next": Family("LLaVA-NeXT", **_LLAVA),
    "qwen2_vl": Family("Qwen2-VL", **_QWEN),
    "qwen2_5_vl": Family("Qwen2.5-VL", **_QWEN),
    "idefics3": Family("Idefics3", **_IDEFICS),
    "smolvlm": Family("SmolVLM", bos="template", video_needs_torchvision=True, **_IDEFICS),
    "paligemma": Family("PaliGemma", placeholder_format="{image}{prompt}", labels="suffix", bos="processor",
                        text_only="tokenizer", text_layout="{bos}{prompt}\n", batch_generation=False,
                        logits_mask=True),
    "gemma3": Family("Gemma3", nested_images=True, logits_mask=True),
    "blip-2": Family("BLIP-2", **_BLIP),
    "instructblip": Family("InstructBLIP", **_BLIP),
}

DEFAULT = Family("other")


def family_of(model_type: str) -> Family:
    """The family record of `model_type`; unknown types get the LLaVA-like defaults."""
    return FAMILIES.get(model_type, DEFAULT)


class _NoVideoProcessor:
    """Stands in for the video processor: answers the defaults a chat template asks for and
    refuses video itself."""

    num_frames = None
    fps = None

    def __call__(self, *args, **kwargs):
        raise ValueError("video input needs torchvision, which this install does not have")


def without_video(processor_class):
    """`processor_class` minus its video processor: a subclass (same name, so a saved config
    still names the real class) that neither requires nor checks one. For families whose
    processor needs torchvision only for video (Qwen2-VL, Qwen2.5-VL, SmolVLM)."""
    base = processor_class.get_attributes

    def get_attributes(cls):
        return [a for a in base() if a != "video_processor"]

    return type(processor_class.__name__, (processor_class,), {"get_attributes": classmethod(get_attributes),
                                                                "video_processor": _NoVideoProcessor(),
                                                                "__module__": __name__})


def processor_from_parts(ref: str):
    """Build the processor saved at `ref` from its image processor + tokenizer (no video
    processor, so no torchvision); its own init options come from processor_config.json."""
    import inspect
    import json
    from pathlib import Path

    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    path = Path(ref)
    cfg = json.loads((path / "processor_config.json").read_text()) if (path / "processor_config.json").is_file() else {}
    name = cfg.get("processor_class")
    if not name or not hasattr(transformers, name):
        raise ValueError(f"{ref}: no processor class recorded in processor_config.json")
    cls = without_video(getattr(transformers, name))
    params = inspect.signature(getattr(transformers, name).__init__).parameters
    kwargs = {k: v for k, v in cfg.items() if k in params and k not in ("image_processor", "tokenizer", "video_processor")}
    template = path / "chat_template.jinja"
    if template.is_file():
        kwargs["chat_template"] = template.read_text()
    if "video_processor" in params:
        kwargs["video_processor"] = None
    return cls(image_processor=AutoImageProcessor.from_pretrained(ref), tokenizer=AutoTokenizer.from_pretrained(ref), **kwargs)
