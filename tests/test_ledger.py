"""The edit ledger and the final-model gate: statuses (holds / lost / superseded), the ledger
round trip, and `edit_and_gate` on the embedded model (a batch that undoes its own edit fails;
a later batch that re-sets a subject supersedes the earlier edit and passes; the drift bound
counts changes from the base model across batches)."""

from __future__ import annotations

import pytest

from odedit.lifecycle.ledger import (Ledger, LedgerEntry, entry_from_request, load_ledger, same_thing,
                                     status_of)


def entry(rid, subject="yorp", target="red", image_hash="h1", status="holds", h=None):
    return LedgerEntry(rid, h or f"hash-{rid}", {"id": rid, "image": "images/x.png", "src": "q", "alt": target,
                                                 "subject": subject}, None, "b", None, status, {}, image_hash)


def test_status_rules():
    assert status_of(1.0, superseded=False) == "holds"
    assert status_of(1.0, superseded=True) == "holds"  # it still answers its own target
    assert status_of(0.5, superseded=False) == "lost"
    assert status_of(0.0, superseded=True) == "superseded"
    assert status_of(None, superseded=False) == "lost"
    assert same_thing(entry("a"), entry("b", subject="YORP", image_hash="other"))
    assert not same_thing(entry("a"), entry("b", subject="gax", image_hash="h1"))
    assert same_thing(entry("a", subject=None), entry("b", subject=None))  # no subject: same image content
    assert not same_thing(entry("a", subject=None), entry("b", subject=None, image_hash="h2"))


def test_ledger_roundtrip_extend_and_hashes(tmp_path, world_requests):
    root, reqs = world_requests
    store = tmp_path / "l1"
    e1 = entry_from_request(reqs[0], "h0", root, store, batch_id="b1")
    e2 = entry_from_request(reqs[1], "h1", root, store, batch_id="b1", status="lost")
    Ledger([e1, e2]).save(store)
    led = load_ledger(store)
    assert [e.request_id for e in led.entries] == [reqs[0].id, reqs[1].id]
    assert led.holding_hashes() == {"h0": reqs[0].id}  # a lost edit is not "already registered"
    live, img_root = led.live_requests()
    assert live[0].src == reqs[0].src and live[0].image.startswith("images/")
    assert (img_root / live[0].image).is_file()  # self-contained: images stored by content hash
    # a child ledger, saved elsewhere, carries the parent's images and names the parent version
    child = led.extend("2", [])
    child.entries[1].status = "superseded"
    child.save(tmp_path / "l2")
    again = load_ledger(tmp_path / "l2")
    assert [e.version for e in again.entries] == ["2", "2"]
    assert len(again.live_requests()[0]) == 1 and (tmp_path / "l2" / again.entries[1].request["image"]).is_file()
    assert load_ledger(tmp_path / "nothing").entries == []


def _undo(req, answer, rid):
    """A request on the same subject, prompt and image that sets the answer back to `answer`."""
    return req.model_copy(update={"id": rid, "alt": answer, "pred": None})


@pytest.fixture(scope="module")
def embedded_cfg():
    from odedit.config import EditConfig

    cfg = EditConfig(method="ft-l")
    cfg.base.steps = 40
    return cfg


def test_batch_that_undoes_its_own_edit_fails_the_gate(adapter, world_requests, embedded_dir, embedded_cfg, tmp_path):
    from odedit.environments import load_image
    from odedit.lifecycle import batch
    from odedit.lifecycle.gate import GateConfig

    root, reqs = world_requests
    first = reqs[0]
    old = adapter.answer(first.src, load_image(first.image, root))
    assert old != first.alt
    undo = _undo(first, old, "undo-0")
    gate_cfg = GateConfig(min_batch_retention=0.95)
    out = batch.edit_and_gate(str(embedded_dir), None, None, [first, undo], root, embedded_cfg, [], None, gate_cfg,
                              tmp_path / "o", batch_id="b1")
    assert [r["status"] for r in out.records] == ["ok", "ok"]
    assert out.records[0]["post"]["reliability"] == 1.0  # it held right after its own edit ...
    assert out.records[0]["final"]["status"] == "lost"  # ... and not on the model that would be registered
    assert out.final["metrics"]["batch_retention"] < 0.95
    assert not out.verdict.passed and any("batch retention" in r for r in out.verdict.reasons)


def test_later_batch_supersedes_an_earlier_edit(adapter, world_requests, embedded_dir, embedded_cfg, tmp_path):
    from odedit.environments import load_image
    from odedit.lifecycle import batch
    from odedit.lifecycle.gate import GateConfig
    from odedit.lifecycle.ledger import load_ledger

    root, reqs = world_requests
    first = reqs[0]
    old = adapter.answer(first.src, load_image(first.image, root))
    gate_cfg = GateConfig(min_batch_retention=0.95, min_prior_retention=0.95)
    b1 = batch.edit_and_gate(str(embedded_dir), None, None, [first], root, embedded_cfg, [], None, gate_cfg,
                             tmp_path / "b1", batch_id="b1")
    assert b1.passed and load_ledger(b1.ledger_dir).entries[0].status == "holds"
    b2 = batch.edit_and_gate(str(embedded_dir), b1.delta_dir, b1.ledger_dir, [_undo(first, old, "undo-0")], root,
                             embedded_cfg, [], None, gate_cfg, tmp_path / "b2", batch_id="b2", parent_version="2")
    led = load_ledger(b2.ledger_dir)
    st = {e.request_id: (e.status, e.version) for e in led.entries}
    assert st == {first.id: ("superseded", "2"), "undo-0": ("holds", None)}
    assert b2.final["metrics"]["prior_retention"] is None  # superseded edits do not count
    assert b2.passed
    live, _ = led.live_requests()
    assert [r.id for r in live] == ["undo-0"]


def test_drift_bound_counts_changes_from_the_base_model(adapter, world_requests, embedded_dir, embedded_cfg, tmp_path):
    """With `max_base_regression_fraction` set, a batch on an edited champion is checked
    against the BASE model's probe answers: the counted changes are exactly the probes whose
    final answer differs from the base's (intended changes exempt), whatever the champion said."""
    from odedit.config import EditConfig
    from odedit.lifecycle import batch
    from odedit.lifecycle.gate import GateConfig, regression_check
    from odedit.lifecycle.ledger import edited_facts, load_ledger

    root, reqs = world_requests
    harsh = EditConfig.from_dict({"method": "ft-l", "base": {"lr": 3e-2, "steps": 30, "early_stop_loss": None}})
    probe_dir = tmp_path / "probes"
    probes = batch.default_probes(embedded_dir, probe_dir)[:16]
    base = batch.probe_answers(adapter, probes, probe_dir)
    gate_cfg = GateConfig(max_regression_fraction=1.0, max_base_regression_fraction=1.0)
    b1 = batch.edit_and_gate(str(embedded_dir), None, None, [reqs[3]], root, harsh, probes, probe_dir,
                             gate_cfg, tmp_path / "b1", batch_id="b1")  # an unconstrained edit that drifts
    assert b1.final["base_regression"]["changed"] == b1.final["regression"]["changed"]  # champion = base
    assert b1.final["regression"]["changed"], "the first batch must move some probe for this test to mean anything"
    b2 = batch.edit_and_gate(str(embedded_dir), b1.delta_dir, b1.ledger_dir, [reqs[4]], root, embedded_cfg, probes,
                             probe_dir, gate_cfg, tmp_path / "b2", batch_id="b2", parent_version="2")
    live = [e for e in load_ledger(b2.ledger_dir).entries if e.status != "superseded"]
    expected = regression_check(probes, base, b2.candidate_answers, *edited_facts(live))
    assert b2.final["base_regression"]["changed"] == expected["changed"]
    assert b2.verdict.metrics["regression_base.changed_fraction"] == expected["changed_fraction"]


def test_locality_probe_about_a_fact_the_batch_edits_is_an_intended_change(adapter, world_requests, embedded_dir,
                                                                          embedded_cfg, tmp_path):
    """Edit A's multimodal locality probe shows edit B's own image and asks B's question: B
    changes that answer on purpose, so A's locality must not count it as a leak; A's other
    probes (other entities) still count."""
    from odedit.lifecycle import batch
    from odedit.lifecycle.gate import GateConfig

    root, reqs = world_requests
    a, b = reqs[0], reqs[1]
    assert b.subject != a.subject and b.pred
    a = a.model_copy(update={"m_loc": [b.image] + list(a.m_loc), "m_loc_q": [b.src] + list(a.m_loc_q),
                             "m_loc_a": [b.pred] + list(a.m_loc_a)})
    out = batch.edit_and_gate(str(embedded_dir), None, None, [a, b], root, embedded_cfg, [], None, GateConfig(),
                              tmp_path / "o", batch_id="b1")
    fa = out.records[0]["final"]
    assert out.records[1]["final"]["reliability"] == 1.0  # B holds: A's first m_loc probe now answers B's target
    assert fa["intended_locality_changes"]["m_loc"] == 1  # that one probe, not A's unrelated ones
    assert out.final["metrics"]["final.m_locality.intended_changes"] >= 1
    assert fa["m_locality"] is None or fa["m_locality"] > 0.5


def test_a_superseded_entry_stays_superseded(adapter, world_requests, tmp_path):
    """An edit a later edit replaced is not owed any more: when its prompt later answers neither
    target it stays `superseded` (not `lost`, which would count against prior retention)."""
    from odedit.lifecycle.final import score_final

    root, reqs = world_requests
    first = entry_from_request(reqs[0].model_copy(update={"alt": "zzqx"}), "h0", root, tmp_path, status="superseded",
                               scores={"reliability": 0.0, "superseded_by": "r2"})
    second = entry_from_request(reqs[0].model_copy(update={"id": "r2", "alt": "qqzx"}), "h1", root, tmp_path)
    fs = score_final(adapter, [], None, [first, second], tmp_path, [], None, {})
    assert fs.prior["h0"]["status"] == "superseded" and fs.prior["h0"]["superseded_by"] == "r2"
    assert fs.prior["h1"]["status"] == "lost"  # the model answers neither invented target
    assert fs.metrics["prior_retention"] == 0.0  # only the live (second) edit counts
