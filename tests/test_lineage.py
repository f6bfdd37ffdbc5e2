"""One lineage, the ledger through the registry, rollback rules, fail-closed registry reads and
the state-dir lock (issues Lifelong 1-2, Trust 1, 2, 4). Real MLflow registry state on the
session's ephemeral Prefect API (fixtures: tests/conftest.py)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from odedit.lifecycle import fixtures

ROOT = Path(__file__).resolve().parents[1]
HOLD = dict(method="ft-l", steps=25, deployment="demo")  # 25 steps: the tiny model's edits hold
LOSE = dict(method="ft-l", steps=3, deployment="demo")  # 3 steps: they do not (reliability 0)


def client():
    from odedit import registry

    return registry, registry.connect()


def _one(path: Path, seed: int) -> Path:
    return fixtures.demo_batch(path, 1, seed=seed)


def _base_and_copy(registry, c, name: str, model: str, work: Path, tags: dict) -> str:
    """Register `name` (version 1 = the base) and a second version holding the base's (empty)
    delta with `tags`, as if registered by hand; returns the second version."""
    registry.init_model(c, name, model, [], None)
    delta = registry.download_delta(c, name, "1", work / "d1")
    run = c.create_run(registry.experiment_id(c))
    return registry.log_version(c, run.info.run_id, name, registry.base_ref(c, name), delta, tags, [])


def test_two_batches_without_promote_chain_and_rollback_restores_ledger(harness, tiny_model, state):
    from flows.edit_batch import edit_batch
    from flows.promote import promote
    from flows.rollback import rollback
    from tasks.lifecycle import PromotionRefused

    a = edit_batch.fn(str(_one(state / "a" / "a.jsonl", 1)), name="L", model=tiny_model, **HOLD)
    b = edit_batch.fn(str(_one(state / "b" / "b.jsonl", 2)), name="L", model=tiny_model, **HOLD)
    assert (a["status"], a["version"], b["status"], b["version"]) == ("registered", "2", "registered", "3")
    registry, c = client()
    assert registry.get_version(c, "L", "3").tags["odedit.parent_version"] == "2"  # built on the candidate
    assert registry.alias_version(c, "L", "candidate").version == "3"
    led = registry.download_ledger(c, "L", "3", state / "l3")
    assert [(e.request_id, e.version) for e in led.entries] == [("edit-1-000", "2"), ("edit-2-000", None)]
    assert all(e.status == "holds" for e in led.entries)

    assert promote.fn("L", deployment="demo")["status"] == "promoted"
    rows = registry.history(c, "L")
    assert [(r["request_id"], r["version"], r["champion_status"]) for r in rows] == [
        ("edit-1-000", "2", "holds"), ("edit-2-000", "3", "holds")]  # promoting it serves every edit
    shown = registry.show(c, "edit-1-000")[0]
    assert shown["on_champion"]["status"] == "holds" and shown["on_champion"]["version"] == "2"
    assert shown["record"]["final"]["reliability"] == 1.0

    # rollback restores the older version's ledger with the version
    assert rollback.fn("L", to="2")["champion"] == "2"
    assert [r["request_id"] for r in registry.history(c, "L")] == ["edit-1-000"]
    # a candidate that does not descend from the champion is refused, with the reason
    assert rollback.fn("L", to="1")["champion"] == "1"
    d = edit_batch.fn(str(_one(state / "d" / "d.jsonl", 4)), name="L", model=tiny_model, **HOLD)
    assert d["version"] == "4" and registry.get_version(c, "L", "4").tags["odedit.parent_version"] == "1"
    assert rollback.fn("L", to="3")["champion"] == "3"
    with pytest.raises(PromotionRefused, match="does not descend from the champion"):
        promote.fn("L", deployment="demo")
    with pytest.raises(PromotionRefused, match="does not descend"):
        promote.fn("L", version="4", deployment="demo")
    assert registry.alias_version(c, "L", "champion").version == "3"


def test_rollback_rules(harness, tiny_model, state):
    from flows.rollback import rollback
    from tasks.lifecycle import PromotionRefused, previous_champion

    registry, c = client()
    # a version whose gate did not pass (e.g. registered by hand): same delta as the base
    bad = _base_and_copy(registry, c, "R", tiny_model, state, {"odedit.kind": "edit-batch", "odedit.gate": "failed"})
    with pytest.raises(PromotionRefused, match="did not pass its gate"):
        rollback.fn("R", to=bad)
    with pytest.raises(PromotionRefused, match="--note"):
        rollback.fn("R", to=bad, force=True)
    assert registry.alias_version(c, "R", "champion").version == "1"
    res = rollback.fn("R", to=bad, force=True, note="incident 42: base answers needed", actor="ops@example.org")
    assert res["champion"] == bad
    move = registry.champion_history(c, "R")[-1]
    assert "incident 42" in move["note"] and move["by"] == "ops@example.org" and move["at"]
    assert rollback.fn("R", to="1")["champion"] == "1"  # the base is always allowed
    # audit: who moved the champion is never "unknown"; the version rolled back from is marked
    assert all(h["by"] and h["by"] != "unknown" for h in registry.champion_history(c, "R"))
    marker = json.loads(registry.get_version(c, "R", bad).tags["odedit.rolled_back"])
    assert marker["to"] == "1" and marker["by"]
    assert registry.get_version(c, "R", bad).tags["odedit.last_rollback_by"] == "ops@example.org"
    from odedit.cli import app

    out = CliRunner().invoke(app, ["history", "R", "--moves", "--format", "json"])
    assert out.exit_code == 0, out.output
    moves = json.loads(out.output)
    assert [m["action"] for m in moves] == ["init", "rollback", "rollback"]
    assert moves[1]["by"] == "ops@example.org" and "incident 42" in moves[1]["note"]

    # no --to: the previous champion, walking back past versions rolled back from (no toggling)
    hist = [{"version": "1", "from": None, "action": "init"}, {"version": "2", "from": "1", "action": "promote"},
            {"version": "3", "from": "2", "action": "promote"}, {"version": "2", "from": "3", "action": "rollback"}]
    assert previous_champion(hist, "2") == "1"
    assert previous_champion(hist[:3], "3") == "2"


def test_lost_edit_is_edited_again_not_skipped(harness, tiny_model, state):
    from flows.edit_batch import edit_batch

    src = _one(state / "r" / "r.jsonl", 5)
    first = edit_batch.fn(str(src), name="X", model=tiny_model, **LOSE)
    registry, c = client()
    led = registry.download_ledger(c, "X", first["version"], state / "lx")
    assert [e.status for e in led.entries] == ["lost"]
    assert [r["champion_status"] for r in registry.history(c, "X", first["version"])] == ["lost"]
    again = edit_batch.fn(str(src), name="X", model=tiny_model, **HOLD)
    assert again["status"] == "registered" and again["skipped"] == []
    led = registry.download_ledger(c, "X", again["version"], state / "ly")
    assert [(e.request_id, e.status) for e in led.entries] == [("edit-5-000", "holds")]  # replaced, not doubled
    rows = registry.history(c, "X", again["version"])
    assert [r["champion_status"] for r in rows] == [f"re-edited in {again['version']}", "holds"]
    third = edit_batch.fn(str(src), name="X", model=tiny_model, **HOLD)
    assert third["status"] == "nothing-to-do" and third["skipped"] == ["edit-5-000"]


def test_alias_read_error_fails_closed(harness, tiny_model, state, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from flows.edit_batch import edit_batch

    registry, c = client()
    registry.init_model(c, "F", tiny_model, [], None)

    def broken(self, name, alias):
        raise MlflowException("database is on fire", error_code="INTERNAL_ERROR")

    src = _one(state / "f" / "f.jsonl", 6)
    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "get_model_version_by_alias", broken)
        t0 = time.time()
        with pytest.raises(registry.RegistryUnavailable):
            edit_batch.fn(str(src), name="F", model=tiny_model, **LOSE)
        assert time.time() - t0 < 60
    registry, c = client()
    assert [v.version for v in registry.all_versions(c, "F")] == ["1"]  # nothing bootstrapped or registered
    assert registry.alias_version(c, "F", "champion").version == "1"
    assert [h["action"] for h in registry.champion_history(c, "F")] == ["init"]


class _Err500(http.server.BaseHTTPRequestHandler):
    def _fail(self):
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error_code": "INTERNAL_ERROR", "message": "boom"}')

    do_GET = do_POST = do_PATCH = do_DELETE = _fail

    def log_message(self, *a):
        pass


def test_cli_registry_500_one_line_nonzero_within_60s(state, monkeypatch):
    from odedit.cli import app

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Err500)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        for args in (["rollback", "m", "--to", "1"], ["promote", "m"], ["history", "m"]):
            t0 = time.time()
            res = CliRunner().invoke(app, [*args, "--tracking-uri", uri])
            assert time.time() - t0 < 60
            assert res.exit_code == 2, res.output
            lines = [ln for ln in res.output.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith(f"registry unreachable at {uri}")
            assert lines[0].endswith("nothing changed") and "Traceback" not in res.output
    finally:
        srv.shutdown()
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_same_batch_twice_at_once_registers_once(harness, tiny_model, state):
    from flows.edit_batch import edit_batch

    src = _one(state / "s" / "s.jsonl", 7)
    results, errors = [], []

    def go():
        try:
            results.append(edit_batch.fn(str(src), name="S", model=tiny_model, **HOLD))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=go) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    assert not errors, errors
    assert sorted(r["status"] for r in results) == ["nothing-to-do", "registered"]
    registry, c = client()
    assert [v.version for v in registry.all_versions(c, "S")] == ["1", "2"]


def test_two_first_uses_on_an_empty_state_dir(tiny_model, state):
    env = dict(os.environ, ODEDIT_STATE_DIR=str(state / "fresh"), PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-c", "from odedit.cli import main; main()", "registry", "init", "Z", "--model", tiny_model]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("champion is version 1" in o for o in outs), outs
    os.environ["ODEDIT_STATE_DIR"] = str(state / "fresh")
    try:
        registry, c = client()
        assert [v.version for v in registry.all_versions(c, "Z")] == ["1"]
    finally:
        os.environ["ODEDIT_STATE_DIR"] = str(state / "state")


def test_champion_moved_outside_odedit_is_refused_until_recorded(harness, tiny_model, state):
    """MLflow's UI/API can move the alias without odedit's gate re-check or audit: batches and
    promote refuse to build on it until a rollback records the move (who, when, why)."""
    from flows.promote import promote
    from flows.rollback import rollback
    from tasks.lifecycle import PromotionRefused, resolve_candidate

    registry, c = client()
    # a second servable version (the base's empty delta, so registered as kind base)
    v2 = _base_and_copy(registry, c, "U", tiny_model, state, {"odedit.kind": "base", "odedit.parent_version": "1"})
    c.set_registered_model_alias("U", "champion", v2)  # what MLflow's UI does: no gate, no record
    with pytest.raises(registry.RegistryError, match="moved outside odedit"):
        registry.check_champion_audited(c, "U")
    with pytest.raises(PromotionRefused, match="moved outside odedit"):
        resolve_candidate.fn("U", None, None)
    res = CliRunner().invoke(__import__("odedit.cli", fromlist=["app"]).app,
                             ["run-batch", str(_one(state / "u" / "u.jsonl", 3)), "--name", "U", "--method", "ft-l",
                              "--steps", "2", "--deployment", "demo"])
    assert res.exit_code == 1 and "moved outside odedit" in res.output and "Traceback" not in res.output
    assert [v.version for v in registry.all_versions(c, "U")] == ["1", v2]  # nothing registered
    rec = rollback.fn("U", to=v2, note="adopted the UI promotion of incident 7", actor="ops@example.org")
    assert rec["status"] == "recorded"
    move = registry.champion_history(c, "U")[-1]
    assert move["version"] == v2 and move["by"] == "ops@example.org" and "outside odedit" in move["note"]
    registry.check_champion_audited(c, "U")  # audited again
    with pytest.raises(PromotionRefused, match="no candidate"):  # refused now only for the usual reason
        promote.fn("U", deployment="demo")
