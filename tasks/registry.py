"""Tasks over `odedit.registry` (MLflow). Registry calls are I/O: they retry."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import run_logger, transient_only

from odedit import registry

# Bounded time: one registry call gives up after MLflow's own HTTP retries (state.
# REGISTRY_HTTP_DEFAULTS: about 3 x 5 s + 3 s at worst, usually a few seconds); a task retries
# it once more, so an unreachable registry fails a command in well under 60 s.
RETRIES = int(os.environ.get("ODEDIT_REGISTRY_RETRIES", "1"))
DELAY = float(os.environ.get("ODEDIT_REGISTRY_RETRY_DELAY", "1"))


def _task(name):
    return task(name=name, retries=RETRIES, retry_delay_seconds=DELAY, cache_policy=NO_CACHE,
                retry_condition_fn=transient_only)


@_task("ensure-registered-model")
def ensure_model(name: str, model: str | None, tracking_uri: str | None, work: str) -> dict:
    """The champion of `name` and the version a batch builds on (`registry.build_target`);
    bootstraps version 1 (the base model) only when `name` is definitely not registered. A
    registry that cannot be read raises RegistryUnavailable: nothing is bootstrapped or moved."""
    from odedit.lifecycle.batch import default_probes
    from odedit.lifecycle.models import resolve_base

    client = registry.connect(tracking_uri)
    exists = registry.model_exists(client, name)  # raises RegistryUnavailable, never "absent" on error
    champ = registry.alias_version(client, name, registry.CHAMPION)
    if champ is None and exists:
        raise registry.RegistryError(f"{name} is registered but has no champion alias; nothing changed "
                                     f"(set one with `odedit rollback {name} --to N --force --note ...`)")
    if champ is None:
        base = registry.base_ref_for(model)
        pdir = Path(work) / "init_probes"
        probes = default_probes(resolve_base(base), pdir)
        version = registry.init_model(client, name, model, probes, pdir)
        run_logger().info("bootstrapped %s version %s (the base model) as champion", name, version)
        champ = registry.get_version(client, name, version)
    registry.check_champion_audited(client, name)
    closed = registry.close_stale_runs(client, name)
    repaired = registry.repair_candidate(client, name)
    target = registry.build_target(client, name)
    return {"version": champ.version, "build_on": target.version, "base_ref": registry.base_ref(client, name),
            "stale_runs_closed": closed, "repaired_candidate": repaired}


@_task("fetch-champion")
def fetch_champion(name: str, version: str, tracking_uri: str | None, work: str):
    """(delta dir, ledger dir, probes, probe dir) of the version a batch builds on."""
    client = registry.connect(tracking_uri)
    delta, ledger = registry.download_version(client, name, version, Path(work) / "champion")
    probes, probe_dir = registry.download_probes(client, name, Path(work) / "probes")
    return str(delta), str(ledger), probes, (str(probe_dir) if probe_dir else None)


def registered_hashes(ledger_dir: str) -> dict:
    """request hash -> request id of the edits that HOLD in a version's ledger: only those are
    skipped by a re-run (a lost or superseded edit submitted again is edited again)."""
    from odedit.lifecycle.ledger import load_ledger

    return load_ledger(ledger_dir).holding_hashes()


@_task("start-mlflow-run")
def start_run(name: str, batch_id: str, params: dict, tags: dict, tracking_uri: str | None) -> str:
    return registry.start_batch_run(registry.connect(tracking_uri), name, batch_id, params, tags)


@_task("log-results")
def log_results(run_id: str, metrics: dict, artifacts_dir: str, tags: dict, tracking_uri: str | None,
                series: dict | None = None) -> None:
    client = registry.connect(tracking_uri)
    registry.log_metrics(client, run_id, metrics)
    registry.log_series(client, run_id, series or {})
    registry.log_artifacts(client, run_id, Path(artifacts_dir))
    registry.set_run_tags(client, run_id, tags)


@_task("register-candidate")
def register_candidate(run_id: str, name: str, base_ref: str, delta_dir: str, tags: dict, chain: list,
                       tracking_uri: str | None, ledger_dir: str | None = None) -> str:
    client = registry.connect(tracking_uri)
    # a retry after a lost reply must not register twice: look for this run's version first
    for v in registry.all_versions(client, name):
        if v.tags.get(registry.T + "run_id") == run_id:
            version = v.version
            break
    else:
        version = registry.log_version(client, run_id, name, base_ref, Path(delta_dir), tags, chain,
                                       Path(ledger_dir) if ledger_dir else None)
    registry.set_candidate(client, name, version)
    run_logger().info("registered %s version %s as candidate", name, version)
    return version


@_task("finish-mlflow-run")
def finish_run(run_id: str, tags: dict, status: str, tracking_uri: str | None) -> None:
    client = registry.connect(tracking_uri)
    registry.set_run_tags(client, run_id, tags)
    registry.end_run(client, run_id, status)


def links(name: str, run_id: str | None, version: str | None, tracking_uri: str | None) -> dict[str, str]:
    """UI links (or ids) of a batch's MLflow run and model version; best effort (a report link
    never fails a batch that is already registered): {} when the registry cannot be read."""
    from odedit.lifecycle.batch_report import mlflow_links

    try:
        client = registry.connect(tracking_uri)
        return mlflow_links(client.tracking_uri, registry.experiment_id(client), run_id, name, version)
    except Exception as exc:  # noqa: BLE001 - any failure here only costs the links
        run_logger().warning("no MLflow links for the batch report: %s", exc)
        return {}


@_task("record-rejected")
def record_rejected(name: str, batch_id: str, source: str, validation_dir: str, tracking_uri: str | None) -> str:
    """An MLflow run (status FAILED, `odedit.status=rejected`) recording a batch whose every row
    validation refused: the source, the reason counts and the validation outputs."""
    from odedit.lifecycle.batch import rejected_by_reason

    client = registry.connect(tracking_uri)
    run_id = registry.start_batch_run(client, name, batch_id, {"source": source}, {registry.T + "status": "rejected"})
    registry.log_metrics(client, run_id, {f"rejected/{k}": v for k, v in rejected_by_reason(validation_dir).items()})
    registry.log_artifacts(client, run_id, Path(validation_dir), "validation")
    registry.end_run(client, run_id, "FAILED")
    return run_id


@_task("publish-batch-report")
def publish_batch_report(run_id: str | None, markdown: str, table: list, name: str, version: str | None,
                         batch_id: str, tracking_uri: str | None, lineage: str = "") -> None:
    """The batch's report where people look: a Prefect markdown artifact (the per-edit table,
    gate checks, links to the MLflow run and version), the same table in the MLflow run
    (`edits_table.json`, MLflow's table view) and as the run's description, and the version's
    description (its lineage). Best effort: a batch is never failed by its report."""
    from odedit.lifecycle.batch_report import TABLE_COLUMNS, artifact_key

    log = run_logger()
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=artifact_key(batch_id),
                                 description=f"edit batch {batch_id} on {name}")
    except Exception as exc:  # no Prefect run context (plain function call) or API hiccup
        log.warning("no Prefect artifact for batch %s: %s", batch_id, exc)
    if run_id is None:
        return
    client = registry.connect(tracking_uri)
    try:
        if table:
            import pandas as pd

            client.log_table(run_id, data=pd.DataFrame(table, columns=list(TABLE_COLUMNS)),
                             artifact_file="edits_table.json")
        client.set_tag(run_id, "mlflow.note.content", markdown)
        if version:
            client.update_model_version(name, version, description=f"{lineage}. Batch run {run_id}.\n\n{markdown}")
    except Exception as exc:
        log.warning("batch %s report not fully logged to MLflow: %s", batch_id, exc)
