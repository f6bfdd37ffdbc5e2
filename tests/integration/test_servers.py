"""The lifecycle on REAL servers: a `prefect server` and an `mlflow server` on 127.0.0.1 (free
ports), a process work pool, `prefect --no-prompt deploy --all` from the repository root
(prefect.yaml as shipped), the `edit-batch` deployment triggered with a small batch of world
requests on the tiny fixture model, one `prefect worker start --run-once`, then the registry
read back THROUGH the mlflow server (a `candidate` version whose parent is the champion) and
`odedit history` showing the edit with its requester.

Everything lives in a temporary directory (PREFECT_HOME, ODEDIT_STATE_DIR, the MLflow SQLite
store and artifact root). Both servers are stopped by process group in a finally block.
Budget: ~1-2 min on 2 cores; every wait polls with a generous deadline and a failure message
carries the tails of the server / worker logs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from odedit.lifecycle import fixtures

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
POOL = "odedit-local"  # the pool prefect.yaml's deployments name
NAME = "odedit-it"
N_REQUESTS = 2
HEALTH_TIMEOUT = float(os.environ.get("ODEDIT_IT_HEALTH_TIMEOUT", "180"))
CLI_TIMEOUT = float(os.environ.get("ODEDIT_IT_CLI_TIMEOUT", "180"))
RUN_TIMEOUT = float(os.environ.get("ODEDIT_IT_RUN_TIMEOUT", "420"))


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 60) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(lines[-n:])


class Proc:
    """A child in its own process group (so its children die with it), output to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, logdir: Path, cwd: Path = ROOT):
        self.name, self.argv = name, argv
        self.log = logdir / f"{name}.log"
        self._fh = open(self.log, "wb")
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def describe(self) -> str:
        return f"--- {self.name} ({' '.join(self.argv[:4])} ...), rc={self.p.poll()}, log tail:\n{tail(self.log)}"

    def wait(self, timeout: float) -> int | None:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the whole group, then SIGKILL after `grace` seconds; always reaps."""
        if self.p.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.p.pid, sig)
                except ProcessLookupError:
                    break
                if self.wait(wait) is not None:
                    break
        try:  # stragglers of the group (a flow subprocess, a uvicorn worker)
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.wait(5)
        self._fh.close()


def http_json(url: str, body: dict | None = None, timeout: float = 10.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        text = r.read().decode()
    try:
        return json.loads(text)
    except ValueError:
        return text


def wait_healthy(proc: Proc, url: str, ok, timeout: float = HEALTH_TIMEOUT) -> float:
    """Poll `url` until `ok(body)`; fail fast (with the log tail) if the server exits."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        if proc.p.poll() is not None:
            pytest.fail(f"{proc.name} exited before it was healthy\n{proc.describe()}")
        try:
            body = http_json(url, timeout=5)
            if ok(body):
                return time.monotonic() - t0
            last = f"unexpected body {body!r:.200}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"{proc.name} not healthy at {url} after {timeout:.0f}s (last: {last})\n{proc.describe()}")


def cli(argv: list[str], env: dict, logs: list[Proc], what: str, timeout: float = CLI_TIMEOUT,
        cwd: Path = ROOT) -> str:
    """Run a CLI to completion in its own group; on failure show its output and the servers' logs."""
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"{what}: timed out after {timeout:.0f}s\n{out[-4000:]}\n" + "\n".join(x.describe() for x in logs))
    if p.returncode != 0:
        pytest.fail(f"{what}: exit {p.returncode}\n{out[-4000:]}\n" + "\n".join(x.describe() for x in logs))
    return out


def flow_run_logs(api: str, run_id: str) -> str:
    try:
        logs = http_json(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200,
                                                "sort": "TIMESTAMP_ASC"})
        return "\n".join(f"{x.get('timestamp', '')[11:19]} {x.get('message', '')}" for x in logs)[-6000:]
    except Exception as exc:  # the server may be the thing that broke
        return f"<could not read flow-run logs: {exc!r}>"


# ----------------------------------------------------------------------------- the test
def test_edit_batch_deployment_on_real_servers(tmp_path):
    t_start = time.monotonic()
    py = sys.executable
    prefect = [py, "-m", "prefect"]
    home = tmp_path / "prefect-home"
    state = tmp_path / "state"
    logdir = tmp_path / "logs"
    for d in (home, state, logdir):
        d.mkdir()
    pport = free_port()
    mport = free_port()
    while mport == pport:
        mport = free_port()
    api = f"http://127.0.0.1:{pport}/api"
    mlflow_uri = f"http://127.0.0.1:{mport}"

    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY", "ODEDIT_STATE"))}
    base |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
             "PREFECT_CLI_PROMPT": "false", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    server_env = base | {
        # no cron runs of the knowledge-update deployment may reach the one-shot worker
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_API_DATABASE_TIMEOUT": "30", "PREFECT_API_DATABASE_CONNECTION_TIMEOUT": "30",
    }
    client_env = base | {"PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": mlflow_uri,
                         "ODEDIT_STATE_DIR": str(state), "ODEDIT_PROBE_COUNT": "6",
                         "PREFECT_API_REQUEST_TIMEOUT": "120",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}

    servers: list[Proc] = []
    worker: Proc | None = None
    try:
        # ---- both servers, started together (they start in parallel)
        servers.append(Proc("prefect-server", [*prefect, "server", "start", "--host", "127.0.0.1",
                                                "--port", str(pport)], server_env, logdir))
        servers.append(Proc("mlflow-server", [
            py, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--default-artifact-root", (tmp_path / "mlartifacts").as_uri()], server_env, logdir))
        # the fixture model and request file while the servers boot
        model = fixtures.tiny_world_model(tmp_path / "tiny-model")
        src = fixtures.demo_batch(tmp_path / "requests" / "batch.jsonl", N_REQUESTS)
        requests = [json.loads(line) for line in src.read_text().splitlines()]
        t_prefect = wait_healthy(servers[0], f"{api}/health", lambda b: b is True)
        t_mlflow = wait_healthy(servers[1], f"{mlflow_uri}/health", lambda b: str(b).strip() == "OK")
        t_up = time.monotonic() - t_start

        # ---- pool, deployments (prefect.yaml from the repository root), one flow run
        cli([*prefect, "work-pool", "create", "--type", "process", POOL], client_env, servers, "work-pool create")
        out = cli([*prefect, "--no-prompt", "deploy", "--all"], client_env, servers, "prefect deploy --all")
        deps = http_json(f"{api}/deployments/filter", {"limit": 50})
        by_name = {d["name"]: d for d in deps}
        assert {"edit-batch", "promote", "rollback", "knowledge-update"} <= set(by_name), (by_name.keys(), out)
        pulls = by_name["edit-batch"].get("pull_steps") or []
        assert any(Path(step.get("prefect.deployments.steps.set_working_directory", {}).get("directory", "/nonexistent"))
                   .resolve() == ROOT for step in pulls), f"edit-batch pull steps do not point at the repo: {pulls}"

        params = {"source": str(src), "name": NAME, "model": str(model), "method": "ft-l", "steps": 3,
                  "deployment": "demo"}
        out = cli([*prefect, "deployment", "run", "edit-batch/edit-batch", "--params", json.dumps(params)],
                  client_env, servers, "prefect deployment run")
        m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        if m:
            run_id = m.group(1)
        else:  # output format changed: ask the API for the deployment's run
            runs = http_json(f"{api}/flow_runs/filter",
                             {"deployments": {"id": {"any_": [by_name["edit-batch"]["id"]]}}, "limit": 5})
            assert len(runs) == 1, f"no single flow run of edit-batch ({len(runs)}); `deployment run` said:\n{out}"
            run_id = runs[0]["id"]

        t_w = time.monotonic()
        worker = Proc("worker", [*prefect, "worker", "start", "--pool", POOL, "--run-once"], client_env, logdir)
        rc = worker.wait(RUN_TIMEOUT)
        state_type = None
        deadline = time.monotonic() + 60  # the worker may exit a moment before the final state lands
        while time.monotonic() < deadline:
            fr = http_json(f"{api}/flow_runs/{run_id}")
            state_type = (fr.get("state") or {}).get("type")
            if state_type in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            if rc is None:
                break
            time.sleep(1)
        assert rc is not None, f"worker still running after {RUN_TIMEOUT:.0f}s\n{worker.describe()}\n" \
                               f"flow-run logs:\n{flow_run_logs(api, run_id)}"
        assert state_type == "COMPLETED", (
            f"flow run {run_id} ended {state_type} (worker rc {rc})\nflow-run logs:\n{flow_run_logs(api, run_id)}\n"
            f"{worker.describe()}\n" + "\n".join(s.describe() for s in servers))
        t_run = time.monotonic() - t_w

        # ---- the registry, read through the mlflow server
        from mlflow.tracking import MlflowClient

        from odedit import registry

        c = MlflowClient(mlflow_uri, mlflow_uri)
        assert c.tracking_uri == mlflow_uri
        champ = registry.alias_version(c, NAME, registry.CHAMPION)
        cand = registry.alias_version(c, NAME, registry.CANDIDATE)
        assert champ is not None and champ.version == "1", f"champion: {champ}"
        assert cand is not None, f"no candidate; versions: {[v.version for v in registry.all_versions(c, NAME)]}\n" \
                                 f"flow-run logs:\n{flow_run_logs(api, run_id)}"
        assert cand.version == "2" and cand.tags[registry.T + "parent_version"] == champ.version
        assert cand.tags[registry.T + "gate"] == "passed"
        assert set(json.loads(cand.tags[registry.T + "request_ids"])) == {r["id"] for r in requests}
        batch_run = c.get_run(cand.tags[registry.T + "run_id"])
        assert batch_run.info.status == "FINISHED" and batch_run.data.params["base_version"] == "1"
        assert batch_run.data.tags[registry.T + "status"] == "registered"
        assert batch_run.data.params["method"] == "ft-l"

        # Prefect <-> MLflow: the flow run carries a markdown artifact with the per-edit table and
        # UI links to the MLflow run and the version; the MLflow run holds the same table
        arts = http_json(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        md = [a for a in arts if a.get("type") == "markdown"]
        assert md, f"no markdown artifact on flow run {run_id}: {arts}"
        text = md[0]["data"]
        assert "## Gate: PASSED" in text and "answer_before" in text
        assert f"{mlflow_uri}/#/experiments/" in text and batch_run.info.run_id in text
        assert f"{mlflow_uri}/#/models/{NAME}/versions/{cand.version}" in text
        assert all(r["id"] in text for r in requests)
        assert "edits_table.json" in {a.path for a in c.list_artifacts(batch_run.info.run_id)}
        assert "## Gate: PASSED" in batch_run.data.tags["mlflow.note.content"]

        rows = registry.history(c, NAME, cand.version)
        want = {r["id"]: r["requester"] for r in requests}
        assert {r["request_id"]: r["requester"] for r in rows} == want
        assert all(r["version"] == cand.version and r["parent_version"] == champ.version for r in rows)

        odedit = Path(py).with_name("odedit")
        argv = [str(odedit)] if odedit.exists() else [py, "-c", "from odedit.cli import main; main()"]
        out = cli([*argv, "history", NAME, "--version", cand.version, "--format", "json",
                   "--tracking-uri", mlflow_uri], client_env, servers, "odedit history")
        cli_rows = json.loads(out[out.index("["):])
        assert {r["request_id"]: r["requester"] for r in cli_rows} == want, out
        timing = (f"servers healthy in {t_up:.1f}s (prefect {t_prefect:.1f}s, mlflow {t_mlflow:.1f}s), "
                  f"worker + flow run {t_run:.1f}s, total {time.monotonic() - t_start:.1f}s")
        print(timing)
        print(f"flow-run logs:\n{flow_run_logs(api, run_id)}")
        (tmp_path / "timing.txt").write_text(timing)
    finally:
        if worker is not None:
            worker.stop(grace=10)
        for s in reversed(servers):
            s.stop()
        for s in servers:
            assert s.p.poll() is not None, f"{s.name} (pid {s.p.pid}) survived shutdown"
