"""Ten model families end to end on tiny random checkpoints built offline
(`odedit.models.tiny_families`): each loads through the Auto classes, validates with its real
image-token count, encodes with exactly one BOS and the target as its labels, keeps prefix-cache
logits equal to the full forward, and edits to Rel 100 with ft-l, odedit-ft-l and odedit-lora
(the answer becomes the target). Also: errors stay on their edit, `odedit edit` exit codes,
`odedit models make-tiny`."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from odedit.editors.losses import read_positions
from odedit.models.tiny_families import BUILDERS

FAMILIES = list(BUILDERS)
METHODS = ["ft-l", "odedit-ft-l", "odedit-lora"]
# Random tiny checkpoints are flatter than trained ones: a larger step than the tuned 1e-3
# (tuned on the pretrained embedded model) reaches the targets within the step budget.
TINY_LR = 3e-2


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def family_batch(tmp_path_factory):
    """(image_root, requests, jsonl path): two edits with every probe kind, words the tiny
    tokenizers know."""
    from schemas.request import EditRequest

    root = tmp_path_factory.mktemp("family_images")
    for i in range(6):
        _image(i).save(root / f"i{i}.png")
    reqs = [
        EditRequest(id="e0", image="i0.png", src="what colour is this thing ?", alt="purple", subject="cat",
                    rephrase=["tell me the colour of this thing ?"], image_rephrase=["i2.png"],
                    loc=["where does the dog live ?"], loc_ans=["rome"], m_loc=["i4.png"],
                    m_loc_q=["what shape is this ?"], m_loc_a=["star"]),
        EditRequest(id="e1", image="i1.png", src="what animal is in the picture ?", alt="horse", subject="dog",
                    rephrase=["which animal is in the image ?"], image_rephrase=["i3.png"],
                    loc=["what is the capital city ?"], loc_ans=["oslo"], m_loc=["i5.png"],
                    m_loc_q=["what colour is this ?"], m_loc_a=["red"]),
    ]
    path = root / "requests.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in reqs))
    return root, reqs, path


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """family -> its tiny checkpoint directory, built once per test session."""
    base = tmp_path_factory.mktemp("families")
    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            from odedit.models.tiny_families import make_tiny

            built[family] = str(make_tiny(family, base / family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def family_adapter(family_dir):
    from odedit.models.adapter import MLLMAdapter

    loaded: dict = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = MLLMAdapter.load(family_dir(family), device="cpu")
        return loaded[family]

    return get


def _first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].strip(string.punctuation) if words else ""


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_encodes_one_bos_and_caches_exactly(family, family_adapter):
    from transformers import AutoModelForImageTextToText

    from odedit.models.adapter import IGNORE_INDEX, Sample

    adapter = family_adapter(family)
    assert adapter.model.config.model_type == family
    mapping = AutoModelForImageTextToText._model_mapping
    assert type(adapter.model) is mapping[type(adapter.model.config)]
    batches = [[Sample("what colour is this thing ?", "purple", _image(0)),
                Sample("what animal is in the picture ?", "horse dog", _image(1))],
               [Sample("where does the dog live ?", "rome")]]
    bos = adapter.tokenizer.bos_token_id
    for samples in batches:
        enc = adapter.encode(samples)
        ids = enc.inputs["input_ids"]
        if adapter.family.bos == "none":
            assert bos is None
        else:
            assert [int((row == bos).sum()) for row in ids] == [1] * len(samples), family
        targets = [adapter.tokenizer.decode(row[row != IGNORE_INDEX]) for row in enc.labels.cpu()]
        assert targets == [s.target for s in samples]
        # the losses' read positions, one row each: the same logits and last hidden states as the
        # full forward's there (families with `logits_mask`: the head ran only there), a per-row
        # scale on the head's input included
        read = read_positions(enc.labels)
        scale = torch.linspace(0.5, 1.5, len(samples)).reshape(-1, 1, 1)
        hidden, full = adapter.hidden_and_logits(enc, scale)
        rows_at_head = []
        hook = adapter.model.get_output_embeddings().register_forward_hook(
            lambda m, args, out: rows_at_head.append(args[0].shape[:-1].numel()))
        try:
            got_h, got = adapter.hidden_and_logits(enc, scale, positions=read)
        finally:
            hook.remove()
        assert (rows_at_head == [int(read.sum())]) == adapter.family.logits_mask, (family, rows_at_head)
        assert got.shape[0] == int(read.sum()) and torch.allclose(got, full[read], atol=1e-5, rtol=0), family
        assert torch.allclose(got_h, hidden[read], atol=1e-5, rtol=0), family
        if adapter.supports_prefix_cache:
            full = adapter.logits(enc)
            cached = adapter.logits(adapter.cache_prefix(enc, adapter.num_layers() // 2))
            assert torch.allclose(cached, full, atol=1e-5, rtol=0), (cached - full).abs().max()
            # the head (and, with the edited layer's insides cached, the top MLP) only where read
            inside = adapter.cache_prefix(enc, adapter.num_layers() // 2, inside=True)
            assert (inside.key is not None and inside.attn is not None) == adapter.family.mlp_cache
            got = adapter.hidden_and_logits(inside, positions=read)[1]  # one row per read position
            assert torch.allclose(got, full[read], atol=1e-5, rtol=0), (got - full[read]).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_answers_in_batches_as_one_at_a_time(family, family_adapter):
    """Regression probes are answered in left-padded batches (`MLLMAdapter.answers`): in every
    family each answer is the one its question gets alone, prompts of different lengths mixed."""
    adapter = family_adapter(family)
    items = [("what colour is this thing ?", _image(0)), ("what animal is in the picture here today ?", _image(1)),
             ("what shape ?", _image(2)), ("where does the dog live ?", None), ("what is the capital city of it ?", None)]
    alone = [adapter.answer(q, im, max_new_tokens=4) for q, im in items]
    assert adapter.answers(items, max_new_tokens=4) == alone, family


@pytest.mark.parametrize("family", FAMILIES)
def test_family_probe_lists_share_forwards_exactly(family, family_adapter):
    """A batch's probe lists are scored with shared forwards (`evaluate.probe_logits_many`): in
    every family each list's logits are the ones it gets on its own (right padding)."""
    from odedit import evaluate
    from odedit.models.adapter import Sample

    adapter = family_adapter(family)
    sets = [[Sample("what colour is this thing ?", "purple", _image(0))],
            [Sample("what animal is in the picture here today ?", "horse dog", _image(1)),
             Sample("what shape ?", "star", _image(2))],
            [Sample("where does the dog live ?", "rome")], [Sample("what is the capital city of it ?", "oslo")]]
    shared = evaluate.probe_logits_many(adapter, sets, max_rows=8)
    for alone, got in zip((evaluate.probe_logits(adapter, ss) for ss in sets), shared):
        assert got.logits.shape == alone.logits.shape and torch.equal(got.labels, alone.labels), family
        assert torch.allclose(got.logits, alone.logits, atol=1e-4), (family, (got.logits - alone.logits).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_family_validates_with_real_image_token_count(family, family_dir, family_adapter, family_batch, tmp_path):
    from odedit.models.adapter import Sample
    from odedit.requests import ValidationLimits, validate_batch

    root, _, path = family_batch
    limits = ValidationLimits.from_model(family_dir(family))
    adapter = family_adapter(family)
    enc = adapter.encode([Sample("what colour is this thing ?", "purple", _image(0))])
    image_id = adapter.model.config.image_token_id if hasattr(adapter.model.config, "image_token_id") \
        else adapter.model.config.image_token_index
    features = int((enc.inputs["input_ids"] == image_id).sum())
    assert features > 0 and limits.image_tokens >= features  # every image feature position counted
    if family == "llava_next":  # anyres: far more than (image_size / patch)^2 = 16
        assert limits.image_tokens > 16
    result = validate_batch(path, [root], limits, out_dir=tmp_path / "v")
    assert len(result.accepted) == 2 and not result.rejected


@pytest.mark.parametrize("family", FAMILIES)
def test_family_edits_to_target_with_each_method(family, family_dir, family_adapter, family_batch):
    from odedit.config import EditConfig
    from odedit.editing import run_edits
    from odedit.pools import locality_pool_for

    root, reqs, _ = family_batch
    adapter = family_adapter(family)
    weights = adapter.mlp_module(adapter.num_layers() // 2).weight.detach().clone()
    pool = locality_pool_for(adapter, family_dir(family), reqs, root)
    for method in METHODS:
        cfg = EditConfig.from_dict({"method": method, "seed": 0})
        cfg.base.lr = TINY_LR
        run = run_edits(adapter, reqs, root, cfg, pool)
        for rec in run.records:
            assert rec.status == "ok", (family, method, rec.error)
            assert rec.post.reliability == 1.0, (family, method, rec.request_id)
            assert _first_word(rec.answer_before) != rec.target
            assert _first_word(rec.answer_after) == rec.target, (family, method, rec.answer_after)
        assert set(run.deltas) == {"e0", "e1"}
    # single mode leaves the model as it was
    assert torch.equal(adapter.mlp_module(adapter.num_layers() // 2).weight, weights)


def test_errors_stay_on_their_edit(family_adapter, family_dir, family_batch):
    """A model-level error while building an edit's locality pool is recorded on that edit;
    the other edit of the batch still runs."""
    from odedit.config import EditConfig
    from odedit.editing import run_edits

    root, reqs, _ = family_batch
    adapter = family_adapter("llava")

    def pool(req):
        if req.id == "e0":
            raise RuntimeError("pool broke")
        return []

    cfg = EditConfig.from_dict({"method": "ft-l", "seed": 0})
    cfg.base.lr = TINY_LR
    run = run_edits(adapter, reqs, root, cfg, pool)
    assert [r.status for r in run.records] == ["error", "ok"]
    assert run.records[0].error.startswith("RuntimeError: pool broke")


def test_cli_make_tiny_edit_and_exit_codes(family_batch, tmp_path, monkeypatch):
    from odedit.cli import app

    runner = CliRunner()
    root, _, path = family_batch
    model = tmp_path / "smolvlm"
    res = runner.invoke(app, ["models", "make-tiny", "smolvlm", str(model)])
    assert res.exit_code == 0, res.output
    assert json.loads((model / "tiny_family.json").read_text())["family"] == "smolvlm"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"base": {"lr": TINY_LR}}))
    args = ["edit", str(path), "--model", str(model), "--method", "ft-l", "--config", str(cfg),
            "--image-root", str(root)]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    records = json.loads((tmp_path / "ok" / "edits.json").read_text())["records"]
    assert [r["post"]["reliability"] for r in records] == [1.0, 1.0]

    def broken(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr("odedit.editing.optimise_edit", broken)
    res = runner.invoke(app, args + ["--out", str(tmp_path / "err")])
    assert res.exit_code == 1 and "model exploded" in res.output

    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["edit", str(path), "--model", str(empty), "--image-root", str(root)])
    assert res.exit_code == 2
    assert "cannot load model" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["models", "make-tiny", "no-such-family", str(tmp_path / "x")])
    assert res.exit_code == 2
