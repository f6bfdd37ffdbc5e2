"""Behaviour of edits on the embedded model: the answer flips, unrelated answers stay, the
delta is compact and removable bit for bit, ODEdit and both base editors run."""

import pytest
import torch

from odedit.config import EditConfig
from odedit.delta import AppliedDelta, Delta, apply_delta, remove_delta
from odedit.editing import run_edits
from odedit.editors.optimise import EditDiverged, optimise_edit
from odedit.environments import build_environments, load_image


@pytest.fixture(autouse=True)
def restore_model(adapter):
    """Every test leaves the session's model as it found it."""
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    yield
    adapter.model.load_state_dict(state)


def _pool(world):
    return lambda req: world.locality_pool(64, req.subject, seed=0)


def _unrelated(req, root):
    """(prompt, image) pairs about other entities: text facts and images."""
    probes = [(q, None) for q in req.loc]
    probes += [(q, load_image(p, root)) for p, q in zip(req.m_loc, req.m_loc_q)]
    return probes


@pytest.mark.parametrize("method", ["odedit-ft-l", "ft-l"])
def test_edit_flips_answer_and_keeps_unrelated(adapter, world, world_requests, method):
    root, requests = world_requests
    req = requests[0]
    image = load_image(req.image, root)
    before = adapter.answer(req.src, image)
    assert before != req.alt
    unrelated_before = [adapter.answer(q, im) for q, im in _unrelated(req, root)]
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}

    run = run_edits(adapter, [req], root, EditConfig(method=method), _pool(world), sequential=True)
    rec = run.records[0]
    assert rec.status == "ok", rec.error
    assert adapter.answer(req.src, image) == req.alt
    assert rec.post.reliability == 1.0
    unrelated_after = [adapter.answer(q, im) for q, im in _unrelated(req, root)]
    kept = sum(a == b for a, b in zip(unrelated_before, unrelated_after)) / len(unrelated_before)
    assert kept >= 0.75, (unrelated_before, unrelated_after)

    # the delta holds only the edited tensor, and removing it restores the base bit for bit
    delta = run.deltas[req.id]
    edited = adapter.model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], edited[k])}
    assert changed == set(delta.tensors) and len(changed) == 1
    remove_delta(adapter.model, AppliedDelta({n: state[n] for n in delta.tensors}))
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert adapter.answer(req.src, image) == before


def test_delta_save_apply_remove_roundtrip(adapter, world, world_requests, tmp_path):
    root, requests = world_requests
    req = requests[1]
    image = load_image(req.image, root)
    base = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    before = adapter.answer(req.src, image)
    run = run_edits(adapter, [req], root, EditConfig(method="ft-l"), _pool(world))  # single: undone
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, base[k])
    run.deltas[req.id].save(tmp_path / "d")
    delta = Delta.load(tmp_path / "d")
    applied = apply_delta(adapter.model, delta)
    assert adapter.answer(req.src, image) == req.alt
    remove_delta(adapter.model, applied)
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, base[k]), k
    assert adapter.answer(req.src, image) == before
    # a delta refuses a base it was not made for
    applied = apply_delta(adapter.model, delta)
    with pytest.raises(ValueError, match="another base"):
        apply_delta(adapter.model, delta)
    remove_delta(adapter.model, applied)


@pytest.mark.parametrize("method", ["lora", "odedit-lora"])
def test_lora_editors_run_and_restore_module_structure(adapter, world, world_requests, method):
    root, requests = world_requests
    req = requests[2]
    names_before = [n for n, _ in adapter.model.named_parameters()]
    run = run_edits(adapter, [req], root, EditConfig(method=method), _pool(world))
    assert run.records[0].status == "ok", run.records[0].error
    assert run.records[0].post.reliability == 1.0
    assert [n for n, _ in adapter.model.named_parameters()] == names_before


def test_nan_edit_restores_model(adapter, world, world_requests):
    root, requests = world_requests
    req = requests[3]
    base = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    es = build_environments(req, root, EditConfig().odedit, world.locality_pool(64, req.subject))
    with pytest.raises(EditDiverged):
        optimise_edit(adapter, es, EditConfig(method="odedit-ft-l"), fault="nan")
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, base[k])
    run = run_edits(adapter, [req], root, EditConfig(), _pool(world), fault={req.id: "nan"})
    assert run.records[0].status == "diverged"


def test_sequential_edits_report_retention(adapter, world, world_requests):
    root, requests = world_requests
    run = run_edits(adapter, requests[4:7], root, EditConfig(method="odedit-ft-l"), _pool(world),
                    sequential=True)
    assert all(r.status == "ok" for r in run.records)
    assert run.retention is not None and run.retention >= 2 / 3


def test_edit_below_min_reliability_is_undone_and_marked_unreached(adapter, world, world_requests):
    """An edit that does not take (reliability under the floor right after optimisation) is
    undone bit for bit and left out; with enough steps the same edit lands."""
    root, requests = world_requests
    base = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    cfg = EditConfig(method="ft-l")
    cfg.base.steps = 2  # too few steps: the first edit cannot reach its target
    cfg.base.early_stop_loss = None
    run = run_edits(adapter, requests[4:5], root, cfg, _pool(world), sequential=True, min_reliability=0.99)
    assert [r.status for r in run.records] == ["unreached"] and "not applied" in run.records[0].error
    assert run.deltas == {}
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, base[k])
    run = run_edits(adapter, requests[4:5], root, EditConfig(method="ft-l"), _pool(world), sequential=True,
                    min_reliability=0.5)
    assert run.records[0].status == "ok" and requests[4].id in run.deltas  # with the default steps it takes


def test_scores_of_many_edits_share_forwards_and_equal_one_by_one(adapter, world, world_requests):
    """The lifecycle scores a whole batch's held-out probes with shared forwards: every score
    and every kept locality logit is what scoring each edit on its own gives (also after the
    weights changed, and with flagged probes left out), whatever the packing."""
    from odedit import evaluate
    from odedit.metrics import SCORE_FIELDS

    def nums(sc):
        return {f: getattr(sc, f) for f in SCORE_FIELDS}

    root, requests = world_requests
    held = {r.id: build_environments(r, root, EditConfig().odedit, (), seed=0).heldout for r in requests[:5]}
    one = {k: evaluate.baseline(adapter, h) for k, h in held.items()}
    for max_rows in (4, 64):  # packs of one or two edits' probe lists, or all of them at once
        many = evaluate.baselines(adapter, held, max_rows=max_rows)
        for k in held:
            assert nums(many[k].scores) == pytest.approx(nums(one[k].scores))
            assert torch.allclose(many[k].m_loc.logits, one[k].m_loc.logits, atol=1e-5)
    layer = adapter.mlp_module(2, "down_proj")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        layer.weight.add_(0.3 * torch.randn(layer.weight.shape, generator=gen))  # some other model
    first = next(iter(held))
    exclude = {first: {"m_loc": [True] + [False] * (len(held[first].m_loc) - 1)}}
    got = evaluate.scores(adapter, {k: (h, one[k]) for k, h in held.items()}, exclude=exclude, max_rows=8)
    for k, h in held.items():
        want = evaluate.score(adapter, h, one[k], exclude=exclude.get(k))
        assert nums(got[k]) == pytest.approx(nums(want)), k
    assert any(got[k].m_locality < 1.0 for k in held)  # the change shows: the comparison is not vacuous
