"""Faults: a NaN edit, MLflow unreachable at registration, a batch process killed with SIGKILL.
Each time: no request lost, the champion untouched, nothing half registered, and a rerun
completes the batch. Asserts the real MLflow registry state."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from odedit.lifecycle import fixtures

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(method="ft-l", steps=3, deployment="demo")  # fixtures: tests/conftest.py


def _registry():
    from odedit import registry

    return registry, registry.connect()


def test_nan_edit_is_left_pending_and_rerun_completes(harness, tiny_model, state):
    from flows.edit_batch import edit_batch

    FAST = dict(method="ft-l", steps=25, deployment="demo")  # enough steps that the ok edit HOLDS (is skipped)
    src = fixtures.demo_batch(state / "req" / "b.jsonl", 2)
    res = edit_batch.fn(str(src), name="n", model=tiny_model, fault={"edit-0-001": "nan"}, **FAST)
    assert res["status"] == "registered" and res["pending"] == ["edit-0-001"]
    registry, c = _registry()
    assert registry.alias_version(c, "n", "champion").version == "1"
    assert registry.registered_hashes(c, "n") and len(registry.registered_hashes(c, "n")) == 1
    again = edit_batch.fn(str(src), name="n", model=tiny_model, **FAST)
    assert again["status"] == "registered" and again["skipped"] == ["edit-0-000"] and again["pending"] == []
    assert len(registry.registered_hashes(c, "n")) == 2
    assert registry.alias_version(c, "n", "champion").version == "1"
    assert registry.alias_version(c, "n", "candidate").version == again["version"] == "3"
    # the rerun built on the candidate (same lineage): version 3 serves both edits
    assert registry.get_version(c, "n", "3").tags["odedit.parent_version"] == "2"
    assert {e.request_id for e in registry.download_ledger(c, "n", "3", state / "l3").entries} == {
        "edit-0-000", "edit-0-001"}


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_mlflow_down_at_registration(harness, tiny_model, state, monkeypatch):
    import tasks.registry as tr
    from flows.edit_batch import edit_batch

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    dead = f"http://127.0.0.1:{_dead_port()}"
    original = tr.register_candidate

    def down(run_id, name, base_ref, delta_dir, tags, chain, tracking_uri, **kw):
        return original.fn(run_id, name, base_ref, delta_dir, tags, chain, dead, **kw)

    monkeypatch.setattr(tr, "register_candidate", down)
    src = fixtures.demo_batch(state / "req" / "b.jsonl", 2)
    with pytest.raises(Exception):
        edit_batch.fn(str(src), name="d", model=tiny_model, **FAST)
    registry, c = _registry()
    assert [v.version for v in registry.all_versions(c, "d")] == ["1"]  # nothing half registered
    assert registry.alias_version(c, "d", "champion").version == "1"
    assert registry.alias_version(c, "d", "candidate") is None
    runs = c.search_runs([registry.experiment_id(c)], "tags.`odedit.kind` = 'edit-batch'")
    assert [r.info.status for r in runs] == ["FAILED"]

    monkeypatch.setattr(tr, "register_candidate", original)
    res = edit_batch.fn(str(src), name="d", model=tiny_model, **FAST)
    assert res["status"] == "registered" and res["skipped"] == []
    assert len(registry.registered_hashes(c, "d")) == 2


def test_killed_batch_resumes(harness, tiny_model, state):
    from flows.edit_batch import edit_batch

    src = fixtures.demo_batch(state / "req" / "b.jsonl", 3)
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "flows" / "edit_batch.py"), str(src), "--name", "k", "--model", tiny_model,
         "--method", "ft-l", "--steps", "25", "--deployment", "demo"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    registry, c = None, None
    try:
        deadline = time.time() + 150
        running = []
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            try:
                registry, c = _registry()
                exp = c.get_experiment_by_name("odedit-batches")
                if exp:
                    running = c.search_runs([exp.experiment_id], "tags.`odedit.kind` = 'edit-batch'")
                    if running:
                        break
            except Exception:
                continue
        assert running, "the batch run never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the batch and the ephemeral Prefect server it started
        proc.wait(timeout=30)
    registry, c = _registry()
    assert [v.version for v in registry.all_versions(c, "k")] == ["1"]
    assert registry.alias_version(c, "k", "champion").version == "1"
    res = edit_batch.fn(str(src), name="k", model=tiny_model, **FAST)
    assert res["status"] == "registered" and len(registry.registered_hashes(c, "k")) == 3
    killed = c.get_run(running[0].info.run_id)
    assert killed.info.status == "KILLED"  # the stale run is closed, not left RUNNING
    assert registry.alias_version(c, "k", "champion").version == "1"
