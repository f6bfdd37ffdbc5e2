"""Tiny random checkpoints of every supported model family, built offline.

It owns the construction of one small, untrained `save_pretrained` directory per family in
`odedit.models.families.FAMILIES` (real transformers config / model / processor classes, a
word-level tokenizer trained locally with `tokenizers`, no download), shaped like the hub
checkpoints in what matters to odedit: the family's special tokens and chat template (BOS
inside the template where the real one has it), who inserts the image placeholders, the
decoder's MLP names. The directory loads through `MLLMAdapter.load` (Auto classes). Used by
the tests and by `odedit models make-tiny FAMILY OUT_DIR`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from odedit.models.families import without_video
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# The words the tiny checkpoints know (tests and examples use these).
WORDS = (
    "what is the colour of this thing shape object animal which one here in picture image photo "
    "say tell me name a an it its does do look like made from where live lives capital city country "
    "red blue green yellow orange purple black white grey pink brown circle square triangle star "
    "cat dog bird fish horse cow apple pear banana paris rome berlin madrid tokyo lima oslo "
    "yes no question answer user assistant model system you are helpful describe caption "
    "please briefly , . ? ! : ; ' - / \n"
)

# init 0.1 (not 0.02): with a 64-wide random decoder behind an RMS norm, 0.02-scale output
# embeddings cap every logit near 1, so no edit could make an answer confident (NLL floor ~6)
# embeddings; tied input/output embeddings (Gemma, OPT) need 0.3 for the same head room.
TEXT = dict(hidden=64, layers=4, heads=4, intermediate=128, positions=512, init=0.1, tied_init=0.3)
VISION = dict(hidden=32, layers=1, heads=2, image=32, patch=8)


def word_tokenizer(specials: list[str], *, bos: str | None, eos: str, pad: str, add_bos: bool,
                   pair_type_ids: bool = False, extra: dict | None = None, corpus: str = WORDS):
    """A lower-cased word-level `PreTrainedTokenizerFast` whose post-processor adds `bos` to
    every sequence when `add_bos` (as Llama / Gemma / OPT tokenizers do)."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    order = ["<pad>", "<unk>"] + [t for t in dict.fromkeys([pad, eos] + ([bos] if bos else []) + specials)
                                  if t not in ("<pad>", "<unk>")]
    tok.train_from_iterator([corpus] * 2, trainers.WordLevelTrainer(special_tokens=order, min_frequency=1))
    tok.decoder = decoders.WordPiece(prefix="##")
    single, pair = "$A", ("$A:0 $B:1" if pair_type_ids else "$A $B")
    if add_bos and bos:
        single, pair = f"{bos} {single}", f"{bos} {pair}"
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(bos, tok.token_to_id(bos))] if add_bos and bos else [])
    kwargs = dict(tokenizer_object=tok, pad_token=pad, unk_token="<unk>", eos_token=eos)
    if bos:
        kwargs["bos_token"] = bos
    if extra:
        kwargs["extra_special_tokens"] = extra
    fast = PreTrainedTokenizerFast(**kwargs)
    fast.padding_side = "right"
    return fast


def _llama(tok, **over):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=TEXT["hidden"], intermediate_size=TEXT["intermediate"],
                       num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"],
                       num_key_value_heads=TEXT["heads"], max_position_embeddings=TEXT["positions"],
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
                       initializer_range=TEXT["init"], **over)


def _clip():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=VISION["hidden"], intermediate_size=VISION["hidden"] * 2,
                            num_hidden_layers=VISION["layers"], num_attention_heads=VISION["heads"],
                            image_size=VISION["image"], patch_size=VISION["patch"], projection_dim=VISION["hidden"])


def _siglip(image=VISION["image"]):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=VISION["hidden"], intermediate_size=VISION["hidden"] * 2,
                              num_hidden_layers=VISION["layers"], num_attention_heads=VISION["heads"],
                              image_size=image, patch_size=VISION["patch"])


LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _llava(tok_extra=None):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = word_tokenizer(["<image>"], bos="<s>", eos="</s>", pad="<pad>", add_bos=True,
                         extra={"image_token": "<image>"})
    s = VISION["image"]
    ip = CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=VISION["patch"],
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token="<image>", chat_template=LLAVA_TEMPLATE)
    cfg = LlavaConfig(vision_config=_clip(), text_config=_llama(tok),
                      image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    return LlavaForConditionalGeneration(cfg), proc


def _llava_next():
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
                              LlavaNextProcessor)

    tok = word_tokenizer(["<image>"], bos="<s>", eos="</s>", pad="<pad>", add_bos=True,
                         extra={"image_token": "<image>"})
    s = VISION["image"]
    pinpoints = [[s, s], [s, 2 * s], [2 * s, s]]
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                    image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=VISION["patch"],
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              image_token="<image>", chat_template=LLAVA_TEMPLATE)
    cfg = LlavaNextConfig(vision_config=_clip(), text_config=_llama(tok),
                          image_token_index=tok.convert_tokens_to_ids("<image>"),
                          vision_feature_select_strategy="default", vision_feature_layer=-1,
                          image_grid_pinpoints=pinpoints, image_seq_length=(s // VISION["patch"]) ** 2)
    return LlavaNextForConditionalGeneration(cfg), proc


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen(version: str):
    from transformers import Qwen2VLImageProcessorPil

    tok = word_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
                         extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    n = VISION["image"] * VISION["image"]
    ip = Qwen2VLImageProcessorPil(patch_size=VISION["patch"], merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": n, "longest_edge": n})
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in [("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(vocab_size=len(tok), hidden_size=TEXT["hidden"], intermediate_size=TEXT["intermediate"],
                num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"],
                num_key_value_heads=TEXT["heads"], max_position_embeddings=TEXT["positions"],
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                initializer_range=TEXT["init"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    if version == "2":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        vision = dict(depth=VISION["layers"], embed_dim=VISION["hidden"], hidden_size=TEXT["hidden"],
                      num_heads=VISION["heads"], patch_size=VISION["patch"], spatial_merge_size=2,
                      temporal_patch_size=2)
        cfg = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        return Qwen2VLForConditionalGeneration(cfg), without_video(Qwen2VLProcessor)(ip, tok, None, chat_template=QWEN_TEMPLATE)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    vision = dict(depth=VISION["layers"], hidden_size=VISION["hidden"], intermediate_size=VISION["hidden"] * 2,
                  num_heads=VISION["heads"], patch_size=VISION["patch"], spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=TEXT["hidden"], window_size=2 * VISION["patch"] * 2,
                  fullatt_block_indexes=[0])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return (Qwen2_5_VLForConditionalGeneration(cfg),
            without_video(Qwen2_5_VLProcessor)(ip, tok, None, chat_template=QWEN_TEMPLATE))


IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]


def _idefics(kind: str):
    """Idefics3 (bos <|begin_of_text|>, added by the tokenizer AND written by the template)
    or SmolVLM (bos <|im_start|>, only in the template)."""
    s, p, scale = VISION["image"], VISION["patch"], 2
    seq = (s // p) ** 2 // scale ** 2
    if kind == "idefics3":
        from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                                  Idefics3Processor, Idefics3VisionConfig)

        bos, add_bos, start = "<|begin_of_text|>", True, "<|begin_of_text|>"
        Config, Model, IP, Proc, VC = (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                                       Idefics3Processor, Idefics3VisionConfig)
    else:
        from transformers import (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil,
                                  SmolVLMProcessor, SmolVLMVisionConfig)

        bos, add_bos, start = "<|im_start|>", False, "<|im_start|>"
        Config, Model, IP, Proc, VC = (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil,
                                       SmolVLMProcessor, SmolVLMVisionConfig)
    template = (start + "{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = word_tokenizer(IDEFICS_SPECIALS + rows + ["<video>"], bos=bos, eos="<end_of_utterance>",
                         pad="<pad>", add_bos=add_bos,
                         extra={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                "global_image_token": "<global-img>",
                                "end_of_utterance_token": "<end_of_utterance>"})
    ip = IP(do_image_splitting=False, size={"longest_edge": s}, max_image_size={"longest_edge": s})
    proc = (Proc(ip, tok, image_seq_len=seq, chat_template=template) if kind == "idefics3"
            else without_video(Proc)(ip, tok, None, image_seq_len=seq, chat_template=template))
    vision = VC(hidden_size=VISION["hidden"], intermediate_size=VISION["hidden"] * 2,
                num_hidden_layers=VISION["layers"], num_attention_heads=VISION["heads"], image_size=s, patch_size=p)
    cfg = Config(vision_config=vision, text_config=_llama(tok).to_dict(), scale_factor=scale,
                 image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return Model(cfg), proc


def _paligemma():
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessorPil)

    tok = word_tokenizer(["<image>"], bos="<bos>", eos="<eos>", pad="<pad>", add_bos=False, pair_type_ids=True,
                         extra={"image_token": "<image>"})
    s = VISION["image"]
    ip = SiglipImageProcessorPil(size={"height": s, "width": s})
    ip.image_seq_length = (s // VISION["patch"]) ** 2
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    text = GemmaConfig(vocab_size=len(tok), hidden_size=TEXT["hidden"], intermediate_size=TEXT["intermediate"],
                       num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"], num_key_value_heads=1,
                       head_dim=TEXT["hidden"] // TEXT["heads"], max_position_embeddings=TEXT["positions"],
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       initializer_range=TEXT["tied_init"])
    cfg = PaliGemmaConfig(vision_config=_siglip(), text_config=text, projection_dim=TEXT["hidden"],
                          hidden_size=TEXT["hidden"], image_token_index=tok.convert_tokens_to_ids("<image>"),
                          vocab_size=len(tok))
    cfg.vision_config.projection_dim = TEXT["hidden"]
    return PaliGemmaForConditionalGeneration(cfg), proc


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _gemma3():
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor,
                              Gemma3TextConfig)

    specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
    tok = word_tokenizer(specials, bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
                         extra={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                "eoi_token": "<end_of_image>"})
    s, p = VISION["image"], VISION["patch"]
    per_image = 4  # avg-pooled to 2x2 soft tokens
    ip = Gemma3ImageProcessorPil(size={"height": s, "width": s})
    proc = Gemma3Processor(ip, tok, chat_template=GEMMA3_TEMPLATE, image_seq_length=per_image)
    text = Gemma3TextConfig(vocab_size=len(tok), hidden_size=TEXT["hidden"], intermediate_size=TEXT["intermediate"],
                            num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"],
                            num_key_value_heads=1, head_dim=TEXT["hidden"] // TEXT["heads"],
                            query_pre_attn_scalar=TEXT["hidden"] // TEXT["heads"], sliding_window=64,
                            max_position_embeddings=TEXT["positions"], pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            initializer_range=TEXT["tied_init"])
    cfg = Gemma3Config(text_config=text, vision_config=_siglip(), mm_tokens_per_image=per_image,
                       boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                       eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                       image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
    model = Gemma3ForConditionalGeneration(cfg)
    # Gemma3 normalises each MLP's output (post_feedforward_layernorm, gain 1 + w, w = 0 at init)
    # against a residual of sqrt(d)-scaled embeddings: one edited MLP could not outweigh it.
    # Trained checkpoints have gains well above 1; give the tiny one gain 4.
    import torch

    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.post_feedforward_layernorm.weight.fill_(3.0)
    return model, proc


def _blip(kind: str):
    from transformers import BlipImageProcessorPil, OPTConfig

    queries = 4
    # no image_token attribute: the BLIP processors register "<image>" themselves (as on the hub)
    tok = word_tokenizer(["<image>"], bos="</s>", eos="</s>", pad="<pad>", add_bos=True)
    s = VISION["image"]
    ip = BlipImageProcessorPil(size={"height": s, "width": s})
    text = OPTConfig(vocab_size=len(tok), hidden_size=TEXT["hidden"], ffn_dim=TEXT["intermediate"],
                     num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"],
                     word_embed_proj_dim=TEXT["hidden"], max_position_embeddings=TEXT["positions"],
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     init_std=TEXT["tied_init"])
    vision = dict(hidden_size=VISION["hidden"], intermediate_size=VISION["hidden"] * 2,
                  num_hidden_layers=VISION["layers"], num_attention_heads=VISION["heads"], image_size=s,
                  patch_size=VISION["patch"])
    qformer = dict(vocab_size=len(tok), hidden_size=VISION["hidden"], num_hidden_layers=1,
                   num_attention_heads=VISION["heads"], intermediate_size=VISION["hidden"] * 2,
                   encoder_hidden_size=VISION["hidden"], max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    image_token = tok.convert_tokens_to_ids("<image>")
    if kind == "blip-2":
        from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

        cfg = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text.to_dict(),
                          num_query_tokens=queries, image_token_index=image_token)
        return Blip2ForConditionalGeneration(cfg), Blip2Processor(ip, tok, num_query_tokens=queries)
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor

    qtok = word_tokenizer([], bos="[CLS]", eos="[SEP]", pad="<pad>", add_bos=True)
    cfg = InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text.to_dict(),
                             num_query_tokens=queries, image_token_index=image_token)
    return InstructBlipForConditionalGeneration(cfg), InstructBlipProcessor(ip, tok, qtok, num_query_tokens=queries)


BUILDERS: dict[str, Callable[[], tuple]] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": lambda: _qwen("2"),
    "qwen2_5_vl": lambda: _qwen("2.5"),
    "idefics3": lambda: _idefics("idefics3"),
    "smolvlm": lambda: _idefics("smolvlm"),
    "paligemma": _paligemma,
    "gemma3": _gemma3,
    "blip-2": lambda: _blip("blip-2"),
    "instructblip": lambda: _blip("instructblip"),
}


def make_tiny(family: str, out: str | Path, seed: int = 0) -> Path:
    """Build family `family`'s tiny random checkpoint into `out` (model + processor) and return it.
    An existing checkpoint at `out` is kept."""
    import torch

    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(BUILDERS)}")
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    model, processor = BUILDERS[family]()
    tok = processor.tokenizer
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "tiny_family.json").write_text(json.dumps({"family": family, "seed": seed}))
    return out
