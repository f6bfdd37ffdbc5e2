"""Tasks of the computing side of a batch (odedit.lifecycle.batch / .gate)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import run_logger

from odedit.lifecycle import batch, gate


@task(name="validate-requests", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def validate_requests(source: str, out_dir: str) -> batch.Validated:
    v = batch.validate(source, out_dir)
    run_logger().info("validated %s: %d accepted, %d quarantined", source, len(v.accepted), v.rejected)
    return v


@task(name="build-environments", cache_policy=NO_CACHE)
def build_environments(requests, image_root: str, cfg, base_path: str) -> dict:
    from odedit.lifecycle.state import envsets_dir

    return batch.environment_hashes(requests, image_root, cfg, batch.world_pool(base_path, cfg.seed),
                                    store=envsets_dir())


@task(name="optimise-edits", retries=0, cache_policy=NO_CACHE)  # no retry: a diverged edit diverges again
def optimise(base_model: str, champion_delta: str, requests, image_root: str, cfg, probes, probe_dir,
             out_dir: str, fault: dict | None = None) -> batch.BatchEdits:
    log = run_logger()
    n = len(requests)
    count = {"i": 0}

    def progress(rec):
        count["i"] += 1
        log.info("edit %d/%d %s: %s (%.1fs)", count["i"], n, rec.request_id, rec.status, rec.seconds)

    return batch.edit_champion(base_model, champion_delta, requests, image_root, cfg, probes, probe_dir,
                               out_dir, fault=fault, on_record=progress)


@task(name="gate", cache_policy=NO_CACHE)
def gate_batch(edits: batch.BatchEdits, probes, cfg: gate.GateConfig, subjects: list[str]) -> gate.GateVerdict:
    regression = gate.regression_check(probes, edits.champion_answers, edits.candidate_answers, subjects)
    verdict = gate.evaluate_gate(edits.records, cfg, regression)
    run_logger().info("gate %s%s", "PASSED" if verdict.passed else "FAILED",
                          "" if verdict.passed else ": " + "; ".join(verdict.reasons))
    return verdict
