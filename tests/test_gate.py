"""The gate: thresholds per deployment, held-out scores, champion regressions (pure)."""

import pytest

from odedit.lifecycle.gate import GateConfig, Probe, evaluate_gate, load_gate_config, regression_check


def rec(rid, status="ok", **post):
    base = {"reliability": 1.0, "t_generality": 1.0, "m_generality": 1.0, "t_locality": 1.0, "m_locality": 1.0}
    return {"request_id": rid, "status": status, "pre": dict.fromkeys(base, 0.0), "post": base | post}


def test_deployment_overrides_default_and_empty_mapping_clears():
    strict = load_gate_config(deployment="knowledge-update")
    assert strict.aggregate["t_locality"] == 0.85 and strict.aggregate["reliability"] == 0.9
    assert load_gate_config(deployment="demo").aggregate == {}
    assert load_gate_config(deployment="no-such").aggregate == load_gate_config().aggregate


def test_unknown_score_refused():
    with pytest.raises(ValueError):
        GateConfig(aggregate={"accuracy": 0.5})


def test_aggregate_and_per_edit_thresholds():
    cfg = GateConfig(aggregate={"t_locality": 0.8}, per_edit={"reliability": 0.5})
    assert evaluate_gate([rec("a"), rec("b")], cfg).passed
    v = evaluate_gate([rec("a", t_locality=0.5), rec("b", t_locality=0.9, reliability=0.2)], cfg)
    assert not v.passed
    assert any("t_locality" in r for r in v.reasons) and any("edit b" in r for r in v.reasons)
    assert v.metrics["post.t_locality"] == pytest.approx(0.7)


def test_failed_edits_are_left_out_not_gated():
    v = evaluate_gate([rec("a"), rec("b", status="diverged")], GateConfig(aggregate={"reliability": 0.9}))
    assert v.passed and v.edits_ok == 1 and v.edits_failed == 1
    assert not evaluate_gate([rec("b", status="diverged")], GateConfig()).passed  # min_ok_edits


def test_regression_ignores_edited_subjects():
    probes = [Probe("p1", "q1", None, "yorp"), Probe("p2", "q2", None, "gax"), Probe("p3", "q3", None, "zib")]
    champ = {"p1": "a", "p2": "b", "p3": "c"}
    cand = {"p1": "CHANGED", "p2": "b", "p3": "CHANGED"}
    r = regression_check(probes, champ, cand, ["yorp"])
    assert r["checked"] == 2 and [c["probe"] for c in r["changed"]] == ["p3"]
    assert not evaluate_gate([rec("a")], GateConfig(max_regression_fraction=0.1), r).passed
    assert evaluate_gate([rec("a")], GateConfig(max_regression_fraction=0.5), r).passed
