"""The edit-batch flow, the design card read aloud:

    validate requests -> build environments -> ODEdit optimisation -> gate on held-out
    generality/locality and champion regressions -> register the candidate in MLflow

Run it as a plain script (Prefect's ephemeral API, no server):

    python flows/edit_batch.py requests.jsonl --name odedit-embedded

or as the `edit-batch` deployment of prefect.yaml. A batch builds on the newest gated version
of the champion's lineage (the candidate when it descends from the champion). Re-running a
batch skips every request that HOLDS in that version's ledger (by request hash) and edits the
rest (a lost or superseded edit is edited again); a failure anywhere leaves the champion
untouched and registers nothing half-way. The whole batch runs under the state directory's
lock of the model name (`state.model_lock`): the same batch started twice registers once.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odedit.lifecycle import state

state.configure_environment()

from prefect import flow  # noqa: E402

from tasks import run_logger  # noqa: E402

from odedit.config import LIFECYCLE_METHOD, EditConfig  # noqa: E402
from odedit.metrics import metric_meta  # noqa: E402
from odedit.lifecycle import batch, batch_report, gate  # noqa: E402
from odedit.registry import T, code_revision  # noqa: E402
from odedit.lifecycle.models import resolve_base  # noqa: E402
from tasks import batch as tb  # noqa: E402
from tasks import registry as tr  # noqa: E402


def _edit_metrics(records: list[dict]) -> dict:
    """Per-edit metrics `edit/<id>/...`. A valid id (schemas/ids.py) is used as is; any other
    becomes `<sanitised>/<hash>` (`/` is outside the id alphabet), so keys never collide:
    `a/b` and `a_b` stay apart."""
    from schemas.ids import safe_id

    out = {}
    for r in records:
        rid = safe_id(r["request_id"], sep="/")
        for side in ("pre", "post"):
            # numbers only: the protocol of each score is in the run's `metric_meta.*` params
            for k, v in (r.get(side) or {}).items():
                if isinstance(v, (int, float)) or v is None:
                    out[f"edit/{rid}/{side}.{k}"] = v
        out[f"edit/{rid}/seconds"] = r.get("seconds")
    return out


def _edit_series(records: list[dict]) -> dict:
    """Per-step series `edit/<id>/trajectory.<loss|lam|tv_penalty>` (MLflow step = optimisation step)."""
    from schemas.ids import safe_id

    return {f"edit/{safe_id(r['request_id'], sep='/')}/trajectory.{k}": v
            for r in records for k, v in (r.get("trajectory") or {}).items()}


def _final_metrics(out: batch.BatchOutcome) -> dict:
    m = {f"final/{k}": v for k, v in (out.final.get("metrics") or {}).items()}
    for r in out.records:
        rid = "".join(c if c.isalnum() or c in "-_." else "_" for c in r["request_id"])
        for k, v in (r.get("final") or {}).items():
            if isinstance(v, (int, float)):
                m[f"final/edit/{rid}/{k}"] = v
    return m


@flow(name="edit-batch")  # no log_prints: libraries print (dill's bytecode dumps while datasets hashes)
def edit_batch(
    source: str,
    name: str = state.DEFAULT_MODEL_NAME,
    method: str = LIFECYCLE_METHOD,
    gate_config: str | None = None,
    deployment: str | None = None,
    model: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    tracking_uri: str | None = None,
    fault: dict[str, str] | None = None,  # test/debug hook: {request_id: "nan"}
    image_root: str | None = None,
) -> dict:
    """Validate, edit, gate and register one batch of edit requests (a JSONL/Parquet/JSON file).
    Image paths in the requests are relative to `image_root` (default: the file's directory)."""
    with state.model_lock(name):
        return _edit_batch(source, name, method, gate_config, deployment, model, seed, steps, tracking_uri, fault,
                           image_root)


def _edit_batch(source, name, method, gate_config, deployment, model, seed, steps, tracking_uri, fault,
                image_root=None) -> dict:
    log = run_logger()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    work = state.work_dir() / f"{Path(source).stem}-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    log.info("registry %s; state directory %s", tracking_uri or state.tracking_uri(), state.state_dir())
    champion = tr.ensure_model(name, model, tracking_uri, str(work))

    parent = champion["build_on"]
    champ_delta, champ_ledger, probes, probe_dir = tr.fetch_champion(name, parent, tracking_uri, str(work))

    validated = tb.validate_requests(source, str(work / "validation"), image_root)
    hashes = batch.request_hashes(validated.accepted)
    done = tr.registered_hashes(champ_ledger)
    skipped = [r.id for r in validated.accepted if hashes[r.id] in done]
    pending = [r for r in validated.accepted if hashes[r.id] not in done]
    result = {"source": source, "name": name, "accepted": len(validated.accepted), "rejected": validated.rejected,
              "skipped": skipped, "pending": [], "run_id": None, "version": None, "gate": None,
              "champion": champion["version"], "parent_version": parent, "work_dir": str(work)}
    if skipped:
        log.info("%d request(s) already hold in version %s, skipped: %s", len(skipped), parent, ", ".join(skipped))
    if validated.rejected:
        by_reason = batch.rejected_by_reason(validated.out_dir)
        log.warning("%d request(s) rejected by validation (kept in %s/quarantine.parquet): %s", validated.rejected,
                    validated.out_dir, ", ".join(f"{k} x{v}" for k, v in by_reason.items()) or "see report.json")
    if not pending:
        if not validated.accepted and validated.rejected:  # every row refused: a visible, recorded failure
            result["status"] = "rejected"
            result["run_id"] = tr.record_rejected(name, validated.batch_id, source, validated.out_dir, tracking_uri)
            tr.publish_batch_report(result["run_id"], batch_report.markdown(
                validated.batch_id, name, "rejected", parent, None, [], None,
                tr.links(name, result["run_id"], None, tracking_uri), validated.rejected), [], name, None,
                validated.batch_id, tracking_uri)
        else:
            result["status"] = "nothing-to-do"
        return result

    cfg = EditConfig(method=method, seed=seed)
    if steps is not None:
        cfg.base.steps = steps
    gate_cfg = gate.load_gate_config(gate_config, deployment)
    base_path = resolve_base(champion["base_ref"])
    params = {**cfg.flat(), "seeds": f"edit={cfg.seed}", "base_model": champion["base_ref"],
              "base_version": parent, "champion_version": champion["version"], "model_name": name, "code_revision": code_revision(),
              "request_hashes": ",".join(hashes[r.id] for r in pending), "n_requests": len(pending),
              "deployment": deployment or "", "gate_config": str(gate_config or gate.DEFAULT_CONFIG),
              **{f"metric_meta.{k}": f"{m.protocol}/{m.scorer}" for k, m in metric_meta().items()}}
    run_id = tr.start_run(name, validated.batch_id, params,
                          {T + "parent_version": parent,
                           T + "request_ids": batch.json_list([r.id for r in pending])}, tracking_uri)
    result["run_id"] = run_id
    try:
        envs = tb.build_environments(pending, validated.image_root, cfg, base_path)
        edits = tb.edit_and_gate(champion["base_ref"], champ_delta, champ_ledger, pending, validated.image_root,
                                 cfg, probes, probe_dir, gate_cfg, str(work / "edits"), fault,
                                 validated.batch_id, run_id, parent, hashes)
        verdict = edits.verdict
        ok_ids = edits.ok_ids
        result["pending"] = [r["request_id"] for r in edits.records if r["status"] != "ok"]
        subjects = sorted({r.subject for r in pending if r.id in ok_ids and r.subject})
        result["gate"] = verdict.to_dict()
        result["final"] = edits.final.get("metrics")

        art = work / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        (art / "requests.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in pending))
        for f in Path(validated.out_dir).glob("*"):
            (art / "validation").mkdir(parents=True, exist_ok=True)
            (art / "validation" / f.name).write_bytes(f.read_bytes())
        batch.write_json(art / "environment_sets.json", envs)
        batch.write_json(art / "gate_report.json", verdict.to_dict())
        batch.write_json(art / "final_scores.json", edits.final)
        batch.write_json(art / "edits.json", {
            "batch_id": validated.batch_id, "model_name": name, "parent_version": parent,
            "config": cfg.to_dict(), "summary": edits.summary, "timings": edits.timings,
            "records": edits.records, "requests": batch.audit_rows(pending),
            "gate": {"passed": verdict.passed, "reasons": verdict.reasons}})
        batch.plot_before_after(edits.records, art / "before_after.png")
        if edits.batch_delta_dir:
            for f in Path(edits.batch_delta_dir).glob("*"):
                (art / "batch_delta").mkdir(exist_ok=True)
                (art / "batch_delta" / f.name).write_bytes(f.read_bytes())
        metrics = {f"batch/{k}": v for k, v in verdict.metrics.items()}
        metrics |= {"batch/edits_ok": len(ok_ids), "batch/edits_failed": len(result["pending"]),
                    "batch/seconds_edit": edits.timings["edit_s"]}
        metrics |= _edit_metrics(edits.records)
        metrics |= _final_metrics(edits)
        tr.log_results(run_id, metrics, str(art), {T + "gate": "passed" if verdict.passed else "failed"}, tracking_uri,
                       series=_edit_series(edits.records))

        if verdict.passed and edits.delta_dir:
            tags = {T + "kind": "edit-batch", T + "parent_version": parent, T + "run_id": run_id,
                    T + "batch_id": validated.batch_id, T + "gate": "passed", T + "method": cfg.method,
                    T + "request_hashes": batch.json_list([hashes[i] for i in ok_ids]),
                    T + "request_ids": batch.json_list(ok_ids), T + "subjects": batch.json_list(subjects),
                    T + "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            version = tr.register_candidate(run_id, name, champion["base_ref"], edits.delta_dir, tags,
                                            [], tracking_uri, ledger_dir=edits.ledger_dir)
            result.update(version=version, status="registered")
        else:
            result["status"] = "gate-failed" if not verdict.passed else "no-successful-edit"
        table = batch_report.edit_table(edits.records, batch.audit_rows(pending))
        md = batch_report.markdown(validated.batch_id, name, result["status"], parent, result["version"], table,
                                   verdict, tr.links(name, run_id, result["version"], tracking_uri),
                                   validated.rejected, skipped)
        tr.publish_batch_report(run_id, md, table, name, result["version"], validated.batch_id, tracking_uri,
                                lineage=f"edits of batch {validated.batch_id} on version {parent}")
        tr.finish_run(run_id, {T + "status": result["status"], T + "version": result["version"] or ""},
                      "FINISHED", tracking_uri)
    except BaseException:
        try:
            tr.finish_run.fn(run_id, {T + "status": "failed"}, "FAILED", tracking_uri)
        except Exception:
            pass  # the registry itself may be what failed; the run is closed as stale later
        raise
    log.info("batch %s: %s (version %s, %d skipped, %d pending)", validated.batch_id, result["status"],
             result["version"], len(skipped), len(result["pending"]))
    return result


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Run one edit batch (ephemeral Prefect API).")
    ap.add_argument("source")
    ap.add_argument("--name", default=state.DEFAULT_MODEL_NAME)
    ap.add_argument("--method", default=LIFECYCLE_METHOD)
    ap.add_argument("--gate-config")
    ap.add_argument("--deployment")
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--image-root")
    a = ap.parse_args()
    print(json.dumps(edit_batch(a.source, a.name, a.method, a.gate_config, a.deployment, a.model,
                                steps=a.steps, image_root=a.image_root), indent=2, default=str))
