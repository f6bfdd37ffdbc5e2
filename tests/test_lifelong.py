"""Lifelong editing: the null-space constraint, replay and fact-level exclusions, on the
embedded model. Behaviour: edits land, preserved knowledge answers as before."""

from __future__ import annotations

import pytest
import torch

from odedit import evaluate
from odedit.config import EditConfig
from odedit.delta import remove_delta
from odedit.editing import Kept, keep_for, run_edits
from odedit.editors.base import edited_layer
from odedit.editors.nullspace import KeyBank, fact_key, key_covariance
from odedit.editors.optimise import optimise_edit
from odedit.environments import build_environments
from odedit.models.adapter import Sample
from odedit.pools import POOL_SIZE, world_preservation


def test_lifelong_preset_and_base_method():
    cfg = EditConfig(method="odedit-ft-l-lifelong")
    assert cfg.uses_odedit and cfg.lifelong and cfg.base_method == "ft-l"
    assert cfg.base.null_space and cfg.base.optimizer == "sgd" and cfg.base.soft_decay > 0 and cfg.base.soft_phrasings > 0
    plain = EditConfig(method="odedit-ft-l")
    assert not plain.base.null_space and plain.base.replay == 0 and plain.base.optimizer == "adam"
    # an explicit choice wins over the preset
    mine = EditConfig(method="ft-l-lifelong", base={"lr": 0.5})
    assert mine.base.lr == 0.5 and mine.base.null_space


def test_keep_for_drops_only_the_fact_being_replaced():
    s = lambda t: Sample("q", t)  # noqa: E731
    kept = [Kept(s("sorrel"), "zorb", "plumcake"), Kept(s("vantor"), "zorb", "orbix"), Kept(s("mallow"), "quam")]
    left = keep_for(type("R", (), {"subject": "zorb", "id": "r"})(), kept, current="Sorrel ")
    assert [k.target for k in left] == ["vantor", "mallow"]  # zorb's other fact and quam's stay
    assert fact_key("Zorb", " Sorrel") == ("zorb", "sorrel")


def test_projected_edit_leaves_preserved_keys_alone(adapter, world, world_requests):
    """An FT-L edit confined to the null space of the preserved keys changes the edit's answer
    while the preserved samples' logits stay as they were (up to the tolerance)."""
    root, requests = world_requests
    req = requests[0]
    cfg = EditConfig(method="ft-l-lifelong")
    module = adapter.mlp_module(edited_layer(adapter, cfg.base), cfg.base.proj)
    preserve = [k for k in world_preservation(world) if k.subject != req.subject][:96]
    bank = KeyBank(adapter, module, cfg.base.null_space_tol)
    bank.add([k.sample for k in preserve], [k.subject for k in preserve])
    probes = [k.sample for k in preserve[::3] if k.sample.image is not None]
    before = evaluate.probe_logits(adapter, probes)
    es = build_environments(req, root, cfg.odedit, world.locality_pool(POOL_SIZE, req.subject), seed=0)

    def same_top1() -> float:
        after = evaluate.probe_logits(adapter, probes)
        real = before.labels.new_ones(before.labels.shape, dtype=torch.bool)  # every position of every probe
        return (before.logits.argmax(-1) == after.logits.argmax(-1))[real].float().mean().item()

    free = optimise_edit(adapter, es, cfg)  # control: the same edit without the constraint
    unconstrained = same_top1()
    remove_delta(adapter.model, free.restore)
    out = optimise_edit(adapter, es, cfg, projection=bank.projector(req.subject, req.pred))
    try:
        assert adapter.answer(req.src, es.heldout.reliability[0].image).split()[:1] == req.alt.split()[:1]
        constrained = same_top1()
        assert constrained >= 0.99 and constrained > unconstrained, (constrained, unconstrained)
        name = next(iter(out.delta.tensors))
        change = out.delta.tensors[name] - out.restore.originals[name]
        cov = key_covariance(adapter, module, probes)
        # the update carries almost no energy along the preserved keys: tr(D C D^T) << |D|^2 tr(C)
        along = torch.trace(change.double() @ cov @ change.double().T) / (change.double().norm() ** 2 * torch.trace(cov))
        assert along.item() < 1e-3
    finally:
        remove_delta(adapter.model, out.restore)


def test_lifelong_sequence_keeps_earlier_edits_and_unrelated_answers(adapter, world, world_requests):
    """Six sequential edits with the lifelong method: every edit holds after the last one and
    unrelated world knowledge (other subjects) keeps its greedy answers."""
    root, requests = world_requests
    reqs = requests[:6]
    subjects = {r.subject for r in reqs}
    preserve = world_preservation(world, 2, 2)
    unrelated = [k.sample for k in preserve if k.subject not in subjects][::6]
    answers = [adapter.answer(s.prompt, s.image, 4) for s in unrelated]
    cfg = EditConfig(method="odedit-ft-l-lifelong")
    pool = lambda r: world.locality_pool(POOL_SIZE, r.subject or "")  # noqa: E731
    snapshot = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    try:
        run = run_edits(adapter, reqs, root, cfg, pool, sequential=True, preserve=preserve)
        assert all(r.status == "ok" for r in run.records)
        assert run.retention == 1.0
        now = [adapter.answer(s.prompt, s.image, 4) for s in unrelated]
        kept = sum(a == b for a, b in zip(answers, now)) / len(answers)
        assert kept >= 0.97, f"only {kept:.2%} of {len(answers)} unrelated answers kept"
    finally:
        with torch.no_grad():
            for n, p in adapter.model.named_parameters():
                p.copy_(snapshot[n])


def test_key_bank_leaves_out_exactly_the_replaced_fact(adapter, world):
    """A bank's projector without fact F equals the projector of a bank that never saw F's
    samples; forgetting F makes it so for good. Memory: one covariance, not one per fact."""
    cfg = EditConfig(method="ft-l-lifelong")
    module = adapter.mlp_module(edited_layer(adapter, cfg.base), cfg.base.proj)
    kept = world_preservation(world, 1, 1)[:60]
    subject, answer = kept[0].subject, kept[0].sample.target
    is_f = [fact_key(k.subject, k.sample.target) == fact_key(subject, answer) for k in kept]
    assert 0 < sum(is_f) < len(kept)
    full, without = (KeyBank(adapter, module, cfg.base.null_space_tol) for _ in range(2))
    full.add([k.sample for k in kept], [k.subject for k in kept])
    rest = [k for k, f in zip(kept, is_f) if not f]
    without.add([k.sample for k in rest], [k.subject for k in rest])
    assert torch.allclose(full.projector(subject, answer), without.projector(), atol=1e-5)
    assert not torch.allclose(full.projector(), without.projector(), atol=1e-5)
    full.forget(subject, answer)
    assert torch.allclose(full.projector(), without.projector(), atol=1e-5)
    assert len(full.totals) == 2 and all(t.shape == (module.weight.shape[1],) * 2 for t in full.totals)


@pytest.mark.parametrize("form", [{}, {"soft_form": "gradient"}])
def test_soft_preservation_steers_the_update_off_the_soft_keys(adapter, world, world_requests, form):
    """With a soft set (more phrasings / views than the hard bank) and soft_decay > 0, an edit
    still lands and its update carries less energy along the soft set's keys than without; as
    a shrink after each step, or as a gradient term that momentum carries (`soft_form`)."""
    root, requests = world_requests
    req = requests[0]
    energy = {}
    preset = EditConfig(method="ft-l-lifelong").base.soft_decay
    for decay in (0.0, preset):
        cfg = EditConfig.from_dict({"method": "ft-l-lifelong", "base": {"soft_decay": decay, **form}})
        module = adapter.mlp_module(edited_layer(adapter, cfg.base), cfg.base.proj)
        bank = KeyBank(adapter, module, cfg.base.null_space_tol)
        hard = [k for k in world_preservation(world, 1, 1) if k.subject != req.subject]
        soft = [k for k in world_preservation(world, 0, 3, seed=1, soft=True) if k.subject != req.subject]
        bank.add([k.sample for k in hard + soft], [k.subject for k in hard + soft], [k.soft for k in hard + soft])
        es = build_environments(req, root, cfg.odedit, world.locality_pool(POOL_SIZE, req.subject), seed=0)
        proj = bank.projector(req.subject, req.pred)
        metric = bank.soft_metric(req.subject, req.pred, within=proj)
        out = optimise_edit(adapter, es, cfg, projection=proj, soft_metric=metric if decay else None)
        try:
            assert adapter.answer(req.src, es.heldout.reliability[0].image).split()[:1] == req.alt.split()[:1]
            name = next(iter(out.delta.tensors))
            change = (out.delta.tensors[name] - out.restore.originals[name]).double()
            energy[decay] = float(torch.trace(change @ metric.double() @ change.T) / change.norm() ** 2)
        finally:
            remove_delta(adapter.model, out.restore)
    assert energy[preset] < 0.9 * energy[0.0], energy  # measured: 0.22 vs 0.26


def test_key_cache_returns_the_same_bank_and_misses_for_other_weights(adapter, world, tmp_path):
    """A cached bank equals the computed one exactly; weights below the edited projection that
    differ (another model, another champion) make a different key, never a stale hit."""
    cfg = EditConfig(method="ft-l-lifelong")
    module = adapter.mlp_module(edited_layer(adapter, cfg.base), cfg.base.proj)
    kept = world_preservation(world, 1, 1)[:40]
    banks = []
    for _ in range(2):
        bank = KeyBank(adapter, module, cfg.base.null_space_tol)
        bank.add([k.sample for k in kept], [k.subject for k in kept], cache=tmp_path)
        banks.append(bank)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert torch.equal(banks[0].totals[0], banks[1].totals[0]) and banks[1].totals[0].abs().sum() > 0
    next(tmp_path.glob("*.pt")).write_bytes(b"not a tensor file")  # a damaged entry is recomputed, not trusted
    again = KeyBank(adapter, module, cfg.base.null_space_tol)
    again.add([k.sample for k in kept], [k.subject for k in kept], cache=tmp_path)
    assert torch.equal(again.totals[0], banks[0].totals[0])
    assert len(list(tmp_path.glob("*.pt"))) == 1 and not list(tmp_path.glob("*.tmp"))
    below = adapter.mlp_module(0, "down_proj").weight
    saved = below.detach().clone()
    try:
        with torch.no_grad():
            below.mul_(1.01)
        other = KeyBank(adapter, module, cfg.base.null_space_tol)
        other.add([k.sample for k in kept], [k.subject for k in kept], cache=tmp_path)
        assert len(list(tmp_path.glob("*.pt"))) == 2
        assert not torch.equal(other.totals[0], banks[0].totals[0])
    finally:
        with torch.no_grad():
            below.copy_(saved)


def test_an_explicit_choice_wins_over_the_preset_even_at_the_default_value():
    """The lifelong preset fills the fields a caller did not choose: asking for the plain
    default value (lr 1e-3, one row a step) is a choice too, and the bench grid's variants of a
    lifelong method (`[+sample1]`) or a --config base keep theirs."""
    from odedit.bench.grid import parse_method
    from odedit.config import LIFELONG_PRESET

    mine = EditConfig(method="odedit-ft-l-lifelong", base={"lr": 1e-3}, odedit={"env_samples": 1})
    assert mine.base.lr == 1e-3 and mine.odedit.env_samples == 1 and mine.base.steps == LIFELONG_PRESET["steps"] != 100
    assert EditConfig(method="odedit-ft-l-lifelong").odedit.env_samples == 0
    assert parse_method("odedit-ft-l-lifelong[+sample1]").config(0).odedit.env_samples == 1
    base = EditConfig.from_dict({"base": {"momentum": 0.5}})
    cfg = parse_method("odedit-ft-l-lifelong").config(3, base)
    assert (cfg.seed, cfg.base.momentum, cfg.base.lr, cfg.base.null_space) == (3, 0.5, LIFELONG_PRESET["lr"], True)
    again = EditConfig.from_dict(cfg.to_dict())  # a logged config read back is the same config
    assert again == cfg


def test_current_answers_are_what_each_edit_replaces(adapter, world_requests, monkeypatch):
    """A non-world model's preservation set and OUT pool hold the batch's prompts with the
    model's current answers; each edit leaves out the fact (subject, its answer_before), so the
    two must be taken alike. No answer: nothing to preserve (never the edit's own target, which
    would preserve the very prompt the edit must change)."""
    from odedit.pools import current_answers

    root, requests = world_requests
    cfg = EditConfig(method="odedit-ft-l-lifelong")
    got = current_answers(adapter, requests[:2], root)
    for req, sample in zip(requests[:2], got):
        edit = build_environments(req, root, cfg.odedit, [], seed=0).heldout.reliability[0]
        assert sample.target == adapter.answer(edit.prompt, edit.image)  # run_edits' answer_before
    monkeypatch.setattr(adapter, "answer", lambda *a, **k: "")
    assert current_answers(adapter, requests[:1], root) == [None]


def test_a_value_outside_a_fields_choices_is_a_clear_error():
    """A misspelt choice (optimizer, soft_form, KL direction...) is refused by name, never run
    down some default branch."""
    for bad, field in (({"base": {"soft_form": "gradual"}}, "soft_form"),
                       ({"base": {"optimizer": "SGD"}}, "optimizer"),
                       ({"odedit": {"kl_direction": "forward"}}, "kl_direction")):
        with pytest.raises(ValueError, match=field):
            EditConfig.from_dict(bad)
    assert EditConfig.from_dict({"base": {"soft_form": "gradient"}}).base.soft_form == "gradient"


def test_an_edit_stops_where_its_fit_stalls():
    """`stall_steps` / `stall_tol`: the loop ends once the fit improved by less than tol over the
    window (an edit its constraints hold above early_stop_loss), never before the window is full."""
    from odedit.editors.optimise import stalled

    creeping = [{"fit": 1.5 * 0.999 ** i} for i in range(30)]  # 2 % over 20 steps
    falling = [{"fit": 3.0 * 0.95 ** i} for i in range(30)]  # 64 % over 20 steps
    assert stalled(creeping, 20, 0.05) and not stalled(falling, 20, 0.05)
    assert not stalled(creeping[:20], 20, 0.05)  # the window is not full yet
    assert not stalled(creeping, 0, 0.05)  # off


def test_a_landed_edits_keys_come_from_its_own_batch(adapter, world, world_requests):
    """The keys an edit's batch caches for its IN and SE rows are the ones the key bank would
    compute with a forward of its own: a bank fed either way holds the same covariances."""
    from odedit.editors.env_batch import EnvBatch

    root, requests = world_requests
    cfg = EditConfig(method="odedit-ft-l-lifelong")
    req = requests[0]
    es = build_environments(req, root, cfg.odedit, world.locality_pool(64, req.subject), seed=0)
    module = adapter.mlp_module(edited_layer(adapter, cfg.base), cfg.base.proj)
    batch = EnvBatch(adapter, es.train, prefix_layer=edited_layer(adapter, cfg.base), inside=True)
    got = batch.keys_of(("IN", "SE"))
    want = [s for e in es.train if e.kind in ("IN", "SE") for s in e.samples]
    assert sorted(map(id, (s for s, _ in got))) == sorted(map(id, want))
    soft = [i % 2 == 0 for i in range(len(got))]
    fed, computed = (KeyBank(adapter, module, cfg.base.null_space_tol) for _ in range(2))
    fed.add([s for s, _ in got], [req.subject] * len(got), soft, keys=[k for _, k in got])
    computed.add([s for s, _ in got], [req.subject] * len(got), soft)
    for a, b in zip(fed.totals, computed.totals):
        assert a.abs().max() > 0 and torch.allclose(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
    assert EnvBatch(adapter, es.train, prefix_layer=edited_layer(adapter, cfg.base)).keys_of(("IN",)) is None
