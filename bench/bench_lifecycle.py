"""Benchmark of one lifecycle edit batch: the wall time of the `edit-batch` flow on an N-edit
request file (default 20), split into edit optimisation vs everything around it (edit
evaluation, model load, probes, validation, Prefect orchestration, MLflow registry I/O).

    python bench/bench_lifecycle.py [--edits 20] [--model DIR] [--method odedit-ft-l-lifelong] [--steps N]
                                    [--deployment demo] [--threads N] [--json FILE] [--keep]

Sources of each number:
  - flow wall: the `edit_batch(...)` flow call, end to end (perf_counter around the call);
  - optimisation / evaluation / load / probes: the `timings` and per-edit `seconds` the batch
    records in its `edits.json`, read back from the MLflow run (cross-checked against the
    run's `batch/seconds_edit` metric);
  - per-task bodies and calls: each Prefect task of the flow timed in-process (the body = the
    task's function; the call = body + Prefect's task engine);
  - orchestration: what is left of the wall outside every task call and the flow body's own
    artifact writing.

Everything runs in a temporary state directory (MLflow SQLite + Prefect's ephemeral API under
it). One-off costs (Prefect API start, `registry init` of version 1) are measured apart and are
not part of the batch. Default model: the embedded checkpoint when it exists, else the tiny
untrained fixture model (`odedit.lifecycle.fixtures.tiny_world_model`); the output says which.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
    os.environ.setdefault(_k, _v)

COMPUTE_TASKS = ("validate-requests", "build-environments", "edit-and-gate")
REGISTRY_TASKS = ("ensure-registered-model", "fetch-champion", "start-mlflow-run",
                  "log-results", "register-candidate", "finish-mlflow-run")


def pick_model(arg: str | None, work: Path) -> tuple[str, str]:
    """(model dir, description)."""
    if arg:
        return arg, f"--model {arg}"
    try:
        from odedit.models.embedded import default_model_path

        p = default_model_path()
        if any(p.glob("*.safetensors")):
            return str(p), f"embedded checkpoint ({p})"
    except FileNotFoundError:
        pass
    from odedit.lifecycle import fixtures

    p = fixtures.tiny_world_model(work / "fixture-model")
    return str(p), "tiny UNTRAINED fixture model (odedit.lifecycle.fixtures; embedded checkpoint not found)"


def write_requests(model: str, n: int, path: Path, seed: int) -> Path:
    from odedit.models.world import World
    from odedit.pools import world_of

    world = world_of(model) or World(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    reqs = world.demo_requests(n, path.parent, seed=seed)
    if len(reqs) < n:
        raise SystemExit(f"the world has only {len(reqs)} demo requests (asked for {n})")
    path.write_text("".join(r.model_dump_json() + "\n" for r in reqs))
    return path


class Timers:
    """Wall time of every task call (engine included) and of its body (the task's function)."""

    def __init__(self):
        self.call = defaultdict(float)
        self.body = defaultdict(float)
        self.count = defaultdict(int)
        self.flow_body = defaultdict(float)

    def wrap_task(self, module, attr: str):
        t = getattr(module, attr)
        fn = t.fn
        name = t.name

        @functools.wraps(fn)
        def body(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.body[name] += time.perf_counter() - t0

        t.fn = body

        class Call:  # the flow looks tasks up on the module at call time
            def __init__(s):
                s.fn = body
                s.name = name

            def __call__(s, *a, **k):
                t0 = time.perf_counter()
                try:
                    return t(*a, **k)
                finally:
                    self.call[name] += time.perf_counter() - t0
                    self.count[name] += 1

        setattr(module, attr, Call())

    def wrap_plain(self, module, attr: str, label: str):
        fn = getattr(module, attr)

        @functools.wraps(fn)
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.flow_body[label] += time.perf_counter() - t0

        setattr(module, attr, timed)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=20, help="requests in the batch (default 20)")
    ap.add_argument("--model", help="base model dir (default: embedded checkpoint if present, else fixture model)")
    ap.add_argument("--method", default="odedit-ft-l-lifelong", help="edit method (default: the product default, odedit-ft-l-lifelong)")
    ap.add_argument("--steps", type=int, help="optimisation steps per edit (default: the EditConfig default)")
    ap.add_argument("--deployment", default="demo",
                    help="gate section (default demo: permissive, so the candidate is registered and the "
                         "registry cost is measured even on an untrained model)")
    ap.add_argument("--seed", type=int, default=0, help="demo-request seed")
    ap.add_argument("--probes", type=int, default=None, help="regression probes (ODEDIT_PROBE_COUNT; default 48)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's default, as the flow runs)")
    ap.add_argument("--json", help="also write the numbers as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    os.environ["ODEDIT_STATE_DIR"] = str(work / "state")
    os.environ["PREFECT_HOME"] = str(work / "state" / "prefect")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if a.probes is not None:
        os.environ["ODEDIT_PROBE_COUNT"] = str(a.probes)
    try:
        return run(a, work)
    finally:
        if a.keep:
            print(f"state kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(a, work: Path) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    t_import = time.perf_counter()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from odedit.lifecycle import state

    state.configure_environment()
    from prefect import flow

    import flows.edit_batch as fe
    import tasks.batch as tb
    import tasks.registry as tr
    from odedit import registry
    from odedit.lifecycle import batch as lb
    from odedit.lifecycle.models import resolve_base

    t_import = time.perf_counter() - t_import

    model, model_desc = pick_model(a.model, work)
    src = write_requests(model, a.edits, work / "requests" / "batch.jsonl", a.seed)
    name = "bench-lifecycle"
    console.print(f"model: {model_desc}")
    console.print(f"batch: {a.edits} world demo requests, method {a.method}, steps "
                  f"{a.steps if a.steps is not None else 'default'}, gate section {a.deployment!r}, "
                  f"torch threads {torch.get_num_threads()}, state {work}")

    # ---- one-off costs, outside the batch
    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    t0 = time.perf_counter()
    warmup()
    t_prefect = time.perf_counter() - t0
    t0 = time.perf_counter()
    client = registry.connect()
    pdir = work / "init_probes"
    probes = lb.default_probes(resolve_base(registry.base_ref_for(model)), pdir)
    registry.init_model(client, name, model, probes, pdir)
    t_init = time.perf_counter() - t0

    # ---- the batch
    timers = Timers()
    for attr in ("validate_requests", "build_environments", "edit_and_gate"):
        timers.wrap_task(tb, attr)
    for attr in ("ensure_model", "fetch_champion", "start_run", "log_results",
                 "register_candidate", "finish_run"):
        timers.wrap_task(tr, attr)
    timers.wrap_plain(lb, "write_json", "write artifacts")
    timers.wrap_plain(lb, "plot_before_after", "plot")
    console.print(f"running the edit-batch flow on {a.edits} edits ...")
    t0 = time.perf_counter()
    res = fe.edit_batch(str(src), name=name, method=a.method, deployment=a.deployment, model=model,
                        seed=0, steps=a.steps)
    wall = time.perf_counter() - t0

    # ---- what the batch recorded (read back from MLflow)
    edits = registry.run_json(client, res["run_id"], "edits.json") or {}
    run = client.get_run(res["run_id"])
    tim = edits.get("timings", {})
    recs = edits.get("records", [])
    opt = sum(r.get("seconds") or 0.0 for r in recs)
    per_edit = [r["seconds"] for r in recs if r.get("seconds")]
    metric_edit = run.data.metrics.get("batch/seconds_edit")
    edit_s, load_s, probe_s = tim.get("edit_s", 0.0), tim.get("load_s", 0.0), tim.get("final_s", 0.0)

    calls, bodies = dict(timers.call), dict(timers.body)
    sum_calls = sum(calls.values())
    engine = {k: calls[k] - bodies.get(k, 0.0) for k in calls}
    other_compute = sum(bodies.get(k, 0.0) for k in COMPUTE_TASKS if k != "edit-and-gate")
    optimise_body = bodies.get("edit-and-gate", 0.0)
    registry_s = sum(bodies.get(k, 0.0) for k in REGISTRY_TASKS)
    flow_body = sum(timers.flow_body.values())
    orchestration = wall - sum_calls - flow_body + sum(engine.values())

    rows = [
        ("edit optimisation (optimise_edit, sum of per-edit seconds)", opt, "edits.json records[].seconds"),
        ("edit evaluation (held-out pre/post scores, answers, environments)", edit_s - opt,
         "edits.json timings.edit_s - optimisation"),
        ("model load + probes + pre-batch baselines", load_s, "edits.json timings.load_s"),
        ("final-model scoring (reload, every edit, probes) + gate", probe_s, "edits.json timings.final_s"),
        ("edit-and-gate task, rest (locality pool, delta compose + save)", optimise_body - edit_s - load_s - probe_s,
         "task body - timings"),
        ("other compute tasks (validate, environments)", other_compute, "task bodies"),
        ("MLflow registry tasks", registry_s, "task bodies: " + ", ".join(REGISTRY_TASKS)),
        ("flow body: artifacts + plot", flow_body, "write_json / plot_before_after"),
        ("Prefect orchestration (task + flow engines)", orchestration,
         "wall - task calls - flow body + (task calls - bodies)"),
    ]
    accounted = sum(r[1] for r in rows)

    t = Table(title=f"edit-batch flow, {a.edits} edits: {wall:.1f} s wall ({res['status']}, version "
                    f"{res.get('version') or '-'})")
    t.add_column("phase")
    t.add_column("seconds", justify="right")
    t.add_column("% wall", justify="right")
    t.add_column("source", style="dim")
    for label, sec, source in rows:
        t.add_row(label, f"{sec:.2f}", f"{100 * sec / wall:.1f}", source)
    t.add_section()
    t.add_row("[bold]flow call, end to end[/]", f"[bold]{wall:.2f}[/]", "100.0",
              f"perf_counter (rows sum {accounted:.2f})")
    t.add_row("  optimisation", f"{opt:.2f}", f"{100 * opt / wall:.1f}", "")
    t.add_row("  everything else (orchestration + registry + evaluation)", f"{wall - opt:.2f}",
              f"{100 * (wall - opt) / wall:.1f}", "")
    console.print(t)

    tt = Table(title="per task: body vs call (Prefect task engine included)")
    for c in ("task", "n", "body s", "call s", "engine s"):
        tt.add_column(c, justify="left" if c == "task" else "right")
    for k in sorted(calls, key=lambda k: -calls[k]):
        tt.add_row(k, str(timers.count[k]), f"{bodies.get(k, 0.0):.2f}", f"{calls[k]:.2f}", f"{engine[k]:.2f}")
    console.print(tt)

    ok = sum(1 for r in recs if r.get("status") == "ok")
    console.print(
        f"edits ok {ok}/{len(recs)}; optimisation per edit: mean {statistics.mean(per_edit) if per_edit else 0:.2f} s, "
        f"median {statistics.median(per_edit) if per_edit else 0:.2f} s; steps per edit "
        f"{[r.get('steps') for r in recs][:20]}")
    console.print(f"cross-check: MLflow metric batch/seconds_edit = {metric_edit}, edits.json timings.edit_s = {edit_s:.2f}")
    console.print(f"one-off, not in the batch: imports {t_import:.1f} s, Prefect ephemeral API start "
                  f"(warm-up flow) {t_prefect:.1f} s, registry init (version 1 + {len(probes)} probes) {t_init:.1f} s")
    out = {"model": model, "model_desc": model_desc, "edits": a.edits, "method": a.method, "steps": a.steps,
           "wall_s": wall, "status": res["status"], "version": res.get("version"),
           "rows": [{"phase": r[0], "seconds": r[1], "source": r[2]} for r in rows],
           "tasks": {k: {"n": timers.count[k], "body_s": bodies.get(k, 0.0), "call_s": calls[k]} for k in calls},
           "timings": tim, "per_edit_seconds": per_edit, "metric_seconds_edit": metric_edit,
           "one_off": {"imports_s": t_import, "prefect_start_s": t_prefect, "registry_init_s": t_init}}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
