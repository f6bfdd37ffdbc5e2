"""Tasks over `odedit.registry` (MLflow). Registry calls are I/O: they retry."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import run_logger

from odedit import registry

RETRIES = int(os.environ.get("ODEDIT_REGISTRY_RETRIES", "2"))
DELAY = float(os.environ.get("ODEDIT_REGISTRY_RETRY_DELAY", "1"))


def _task(name):
    return task(name=name, retries=RETRIES, retry_delay_seconds=DELAY, cache_policy=NO_CACHE)


@_task("ensure-registered-model")
def ensure_model(name: str, model: str | None, tracking_uri: str | None, work: str) -> dict:
    """The champion of `name`; bootstraps version 1 (the base model) when `name` is new."""
    from odedit.lifecycle.batch import default_probes
    from odedit.lifecycle.models import resolve_base

    client = registry.connect(tracking_uri)
    champ = registry.alias_version(client, name, registry.CHAMPION)
    if champ is None:
        base = registry.base_ref_for(model)
        pdir = Path(work) / "init_probes"
        probes = default_probes(resolve_base(base), pdir)
        version = registry.init_model(client, name, model, probes, pdir)
        run_logger().info("bootstrapped %s version %s (the base model) as champion", name, version)
        champ = registry.get_version(client, name, version)
    closed = registry.close_stale_runs(client, name)
    repaired = registry.repair_candidate(client, name)
    return {"version": champ.version, "base_ref": registry.base_ref(client, name),
            "stale_runs_closed": closed, "repaired_candidate": repaired}


@_task("registered-hashes")
def registered_hashes(name: str, tracking_uri: str | None) -> dict:
    return registry.registered_hashes(registry.connect(tracking_uri), name)


@_task("fetch-champion")
def fetch_champion(name: str, version: str, tracking_uri: str | None, work: str):
    client = registry.connect(tracking_uri)
    delta = registry.download_delta(client, name, version, Path(work) / "champion")
    probes, probe_dir = registry.download_probes(client, name, Path(work) / "probes")
    return str(delta), probes, (str(probe_dir) if probe_dir else None)


@_task("start-mlflow-run")
def start_run(name: str, batch_id: str, params: dict, tags: dict, tracking_uri: str | None) -> str:
    return registry.start_batch_run(registry.connect(tracking_uri), name, batch_id, params, tags)


@_task("log-results")
def log_results(run_id: str, metrics: dict, artifacts_dir: str, tags: dict, tracking_uri: str | None) -> None:
    client = registry.connect(tracking_uri)
    registry.log_metrics(client, run_id, metrics)
    registry.log_artifacts(client, run_id, Path(artifacts_dir))
    registry.set_run_tags(client, run_id, tags)


@_task("register-candidate")
def register_candidate(run_id: str, name: str, base_ref: str, delta_dir: str, tags: dict, chain: list,
                       tracking_uri: str | None) -> str:
    client = registry.connect(tracking_uri)
    # a retry after a lost reply must not register twice: look for this run's version first
    for v in registry.all_versions(client, name):
        if v.tags.get(registry.T + "run_id") == run_id:
            version = v.version
            break
    else:
        version = registry.log_version(client, run_id, name, base_ref, Path(delta_dir), tags, chain)
    registry.set_candidate(client, name, version)
    run_logger().info("registered %s version %s as candidate", name, version)
    return version


@_task("finish-mlflow-run")
def finish_run(run_id: str, tags: dict, status: str, tracking_uri: str | None) -> None:
    client = registry.connect(tracking_uri)
    registry.set_run_tags(client, run_id, tags)
    registry.end_run(client, run_id, status)
