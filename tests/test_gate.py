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


def test_regression_exempts_only_changes_to_a_live_edits_target():
    probes = [Probe("p1", "q1", None, "yorp"), Probe("p2", "q2", None, "gax"), Probe("p3", "q3", None, "zib"),
              Probe("p4", "q4", None, "yorp")]
    champ = {"p1": "a", "p2": "b", "p3": "c", "p4": "d"}
    # p1 now answers the live edit's target (intended); p4 is about the edited subject too, but
    # its new answer is not an edit's target: it counts, as does p3 (another subject)
    cand = {"p1": "Gorrin", "p2": "b", "p3": "CHANGED", "p4": "CHANGED"}
    r = regression_check(probes, champ, cand, {"yorp": {"gorrin"}})
    assert r["checked"] == 4 and [c["probe"] for c in r["changed"]] == ["p3", "p4"]
    assert [c["probe"] for c in r["intended"]] == ["p1"] and r["changed_fraction"] == 0.5
    assert not evaluate_gate([rec("a")], GateConfig(max_regression_fraction=0.1), r).passed
    assert evaluate_gate([rec("a")], GateConfig(max_regression_fraction=0.5), r).passed
    # p4 answered "d", the old value of a fact a live edit about yorp changed: it asks that
    # fact, so its drift is no regression; p3 (another subject) still counts
    r = regression_check(probes, champ, cand, {"yorp": {"gorrin"}}, {"yorp": {"d", "gorrin"}, "zib": {"x"}})
    assert [c["probe"] for c in r["changed"]] == ["p3"] and [c["probe"] for c in r["intended"]] == ["p1", "p4"]


def test_thresholds_apply_to_final_model_scores_and_retention():
    cfg = GateConfig(per_edit={"reliability": 0.5}, min_batch_retention=0.95, min_prior_retention=0.95)
    r = rec("a") | {"final": {"reliability": 0.0, "status": "lost"}}  # held right after its edit, lost at the end
    v = evaluate_gate([r, rec("b")], cfg, None, {"batch_retention": 0.5, "prior_retention": None})
    assert not v.passed
    assert any("edit a" in x for x in v.reasons) and any("batch retention" in x and "a" in x for x in v.reasons)
    v = evaluate_gate([rec("b")], cfg, None, {"batch_retention": 1.0, "prior_retention": 0.5})
    assert not v.passed and any("earlier edits" in x for x in v.reasons)
    assert evaluate_gate([rec("b")], cfg, None, {"batch_retention": 1.0, "prior_retention": None}).passed
    with pytest.raises(ValueError):
        GateConfig(min_batch_retention=1.5)


def test_default_gate_has_retention_floors():
    cfg = load_gate_config()
    assert cfg.min_batch_retention == 0.95 and cfg.min_prior_retention == 0.95
    assert cfg.max_regression_fraction == 0.05


def test_gate_names_its_locality_protocol_and_logs_both():
    cfg = load_gate_config()
    assert cfg.locality_protocol == "answer"  # explicit in configs/gate.yaml
    # EasyEdit's whole-sequence M-Loc is far lower than the answer variant on the same edits
    r = rec("a", m_locality=0.94, m_locality_easyedit=0.54, t_locality_easyedit=0.6)
    v = evaluate_gate([r], cfg)
    assert v.passed and v.locality_protocol == "answer"
    assert v.metrics["final.m_locality"] == 0.94
    assert v.metrics["final.m_locality/answer"] == 0.94 and v.metrics["final.m_locality/easyedit"] == 0.54
    strict = GateConfig(aggregate={"m_locality": 0.7}, locality_protocol="easyedit")
    v = evaluate_gate([r], strict)
    assert not v.passed and "m_locality@easyedit" in v.reasons[0] and v.metrics["final.m_locality"] == 0.54
    with pytest.raises(ValueError):
        GateConfig(locality_protocol="whole")


def test_drift_from_the_base_is_bounded_even_when_each_batch_is_under_its_own_bound():
    """Two probes moved since the base, none since the champion: the per-batch check passes,
    the base-anchored one refuses; without a bound it is not checked."""
    probes = [Probe(f"p{i}", f"q{i}", None, f"s{i}") for i in range(10)]
    base = {p.id: "a" for p in probes}
    champion = dict(base, p0="b", p1="b")  # drift that earlier batches let through
    candidate = dict(champion)
    per_batch = regression_check(probes, champion, candidate)
    from_base = regression_check(probes, base, candidate)
    cfg = GateConfig(max_regression_fraction=0.05, max_base_regression_fraction=0.1)
    v = evaluate_gate([rec("a")], cfg, per_batch, base_regression=from_base)
    assert not v.passed and any("BASE" in r for r in v.reasons)
    assert v.metrics["regression_base.changed_fraction"] == pytest.approx(0.2)
    assert evaluate_gate([rec("a")], GateConfig(max_regression_fraction=0.05), per_batch,
                         base_regression=from_base).passed
    with pytest.raises(ValueError):
        GateConfig(max_base_regression_fraction=1.5)
