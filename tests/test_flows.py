"""The lifecycle flows on the ephemeral Prefect API (one session harness): a batch registers a
candidate, promote/rollback move the champion alias, history shows the edit, a rerun skips
registered requests, a failed gate registers nothing. Asserts real MLflow registry state."""

from __future__ import annotations

import os

import pytest

from odedit.lifecycle import fixtures

FAST = dict(method="ft-l", steps=3, deployment="demo")  # fixtures: tests/conftest.py


def client():
    from odedit import registry

    return registry.connect()


def test_batch_promote_rollback_history(harness, tiny_model, state):
    from flows.edit_batch import edit_batch
    from flows.promote import promote
    from flows.rollback import rollback
    from odedit import registry

    src = fixtures.demo_batch(state / "req" / "batch.jsonl", 2)
    res = edit_batch.fn(str(src), name="m", model=tiny_model, **FAST)
    assert res["status"] == "registered" and res["version"] == "2"
    c = client()
    assert registry.alias_version(c, "m", "champion").version == "1"
    cand = registry.alias_version(c, "m", "candidate")
    assert cand.version == "2" and cand.tags["odedit.parent_version"] == "1"
    run = c.get_run(res["run_id"])
    assert run.data.params["method"] == "ft-l" and run.data.params["base_version"] == "1"
    assert "batch/post.reliability" in run.data.metrics
    assert {"final/batch_retention", "final/final.reliability", "final/regression.changed_fraction"} <= set(
        run.data.metrics)  # the gate scored the final candidate
    # each edit's optimisation trajectory is a step-indexed series (one point per step)
    traj = [k for k in run.data.metrics if k.startswith("edit/") and k.endswith("/trajectory.loss")]
    assert len(traj) == 2
    assert [m.step for m in c.get_metric_history(res["run_id"], traj[0])] == list(
        range(len(c.get_metric_history(res["run_id"], traj[0]))))
    assert len(c.get_metric_history(res["run_id"], traj[0])) > 1
    # linked: the run holds the per-edit table and a description with the gate's checks; the
    # version's description names its lineage; the experiment opens in the classic ML view
    arts_all = {a.path for a in c.list_artifacts(res["run_id"])}
    assert "edits_table.json" in arts_all
    note = run.data.tags.get("mlflow.note.content") or c.get_run(res["run_id"]).data.tags["mlflow.note.content"]
    assert "## Gate: PASSED" in note and "answer_before" in note and "MLflow run" in note
    assert "on version 1" in c.get_model_version("m", "2").description
    assert c.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    arts = {a.path for a in c.list_artifacts(res["run_id"])}
    assert {"requests.jsonl", "gate_report.json", "environment_sets.json", "before_after.png", "edits.json",
            "validation", "model"} <= arts or {"requests.jsonl", "gate_report.json", "edits.json"} <= arts

    # each request's environment set is kept as a datasets Dataset keyed by its request hash
    from odedit import envstore
    from odedit.lifecycle.state import envsets_dir

    saved = sorted(p.name for p in envsets_dir().iterdir())
    assert len(saved) == 2
    assert envstore.load(envsets_dir(), saved[0]).heldout.reliability

    # compact: the version holds a delta, not the weights
    import mlflow

    local = mlflow.artifacts.download_artifacts(f"models:/m@candidate", dst_path=str(state / "dl"))
    sizes = sum(f.stat().st_size for f in __import__("pathlib").Path(local).rglob("*") if f.is_file())
    model_bytes = sum(f.stat().st_size for f in __import__("pathlib").Path(tiny_model).rglob("*.safetensors"))
    assert sizes < model_bytes

    p = promote.fn("m", gate_config=None, deployment="demo")
    assert p["status"] == "promoted"
    assert registry.alias_version(c, "m", "champion").version == "2"
    assert registry.alias_version(c, "m", "candidate") is None

    rows = registry.history(c, "m")
    assert {r["request_id"] for r in rows} == {"edit-0-000", "edit-0-001"}
    assert all(r["requester"] and r["answer_before"] is not None and r["version"] == "2" for r in rows)
    # each edit's status on the champion comes from the version's ledger, with final-model scores
    assert all(r["champion_status"] in ("holds", "lost") and r["final.reliability"] is not None for r in rows)
    ledger2 = registry.download_ledger(c, "m", "2", state / "l2")
    assert {e.request_id for e in ledger2.entries} == {"edit-0-000", "edit-0-001"}
    assert registry.download_ledger(c, "m", "1", state / "l1").entries == []  # the base: empty ledger

    r = rollback.fn("m")
    assert r["status"] == "rolled-back" and registry.alias_version(c, "m", "champion").version == "1"
    assert registry.history(c, "m") == []
    assert len(registry.all_versions(c, "m")) == 2  # versions are never created or removed by aliases

    # rerun after the rollback: the edits are no longer in the champion's lineage (its ledger is
    # empty), so they are edited again on it, not skipped as "already registered"
    again = edit_batch.fn(str(src), name="m", model=tiny_model, **FAST)
    assert again["status"] == "registered" and again["skipped"] == [] and again["version"] == "3"
    assert registry.get_version(c, "m", "3").tags["odedit.parent_version"] == "1"


def test_failed_gate_registers_nothing(harness, tiny_model, state, tmp_path):
    from flows.edit_batch import edit_batch
    from odedit import registry

    gate = tmp_path / "gate.json"
    gate.write_text('{"default": {"aggregate": {"reliability": 1.01}}}')
    src = fixtures.demo_batch(state / "req" / "b.jsonl", 1)
    res = edit_batch.fn(str(src), name="g", model=tiny_model, gate_config=str(gate), method="ft-l", steps=2)
    assert res["status"] == "gate-failed" and res["version"] is None
    c = client()
    assert [v.version for v in registry.all_versions(c, "g")] == ["1"]
    assert registry.alias_version(c, "g", "candidate") is None
    run = c.get_run(res["run_id"])
    assert run.data.tags["odedit.gate"] == "failed"
    assert registry.run_json(c, res["run_id"], "gate_report.json")["reasons"]


def test_inbox_drain_moves_files(harness, tiny_model, state):
    from flows.inbox_drain import inbox_drain

    inbox = state / "inbox"
    fixtures.demo_batch(inbox / "one.jsonl", 1, seed=3)
    out = inbox_drain.fn(str(inbox), name="i", model=tiny_model, method="ft-l", steps=2, deployment="demo",
                         settle_s=0)  # just written: taken without waiting for the settle time
    assert out[0]["status"] == "registered"
    assert (inbox / "done" / "one.jsonl").is_file() and not (inbox / "one.jsonl").exists()


def test_pyfunc_by_alias(harness, tiny_model, state):
    import base64
    import io

    import mlflow
    import pandas as pd

    from odedit import registry

    c = client()
    registry.init_model(c, "p", tiny_model, [], None)
    model = mlflow.pyfunc.load_model("models:/p@champion")
    from odedit.models.world import World

    img = World(0).render(World(0).entities[0], 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = model.predict(pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode(), ""],
                                      "prompt": ["question: what colour is this ? answer:", "hello"]}))
    assert list(out.columns) == ["answer"] and len(out) == 2

