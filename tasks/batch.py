"""Tasks of the computing side of a batch (odedit.lifecycle.batch / .gate)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import run_logger

from odedit.lifecycle import batch, gate


@task(name="validate-requests", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def validate_requests(source: str, out_dir: str, image_root: str | None = None) -> batch.Validated:
    v = batch.validate(source, out_dir, image_root)
    run_logger().info("validated %s: %d accepted, %d quarantined", source, len(v.accepted), v.rejected)
    return v


@task(name="build-environments", cache_policy=NO_CACHE)
def build_environments(requests, image_root: str, cfg, base_path: str) -> dict:
    from odedit.lifecycle.state import envsets_dir

    return batch.environment_hashes(requests, image_root, cfg, batch.world_pool(base_path, cfg.seed),
                                    store=envsets_dir())


@task(name="edit-and-gate", retries=0, cache_policy=NO_CACHE)  # no retry: a diverged edit diverges again
def edit_and_gate(base_ref: str, champion_delta: str, champion_ledger: str, requests, image_root: str, cfg, probes,
                  probe_dir, gate_cfg: gate.GateConfig, out_dir: str, fault: dict | None = None,
                  batch_id: str | None = None, run_id: str | None = None, parent_version: str | None = None,
                  hashes: dict | None = None) -> batch.BatchOutcome:
    """Edit the build target, score the FINAL candidate, gate it (odedit.lifecycle.batch.edit_and_gate)."""
    log = run_logger()
    n = len(requests)
    count = {"i": 0}

    def progress(rec):
        count["i"] += 1
        log.info("edit %d/%d %s: %s (%.1fs)", count["i"], n, rec.request_id, rec.status, rec.seconds)

    out = batch.edit_and_gate(base_ref, champion_delta, champion_ledger, requests, image_root, cfg, probes, probe_dir,
                              gate_cfg, out_dir, fault=fault, on_record=progress, batch_id=batch_id, run_id=run_id,
                              parent_version=parent_version, hashes=hashes)
    v = out.verdict
    for line in gate.format_checks(v):
        log.info("gate check: %s", line)
    log.info("gate on the final model %s%s", "PASSED" if v.passed else "FAILED",
             "" if v.passed else ": " + "; ".join(v.reasons))
    return out
