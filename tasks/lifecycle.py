"""Tasks of promotion and rollback (odedit.registry + odedit.lifecycle.promotion)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import run_logger

from odedit import registry
from odedit.lifecycle import gate, promotion
from tasks.registry import DELAY, RETRIES


class PromotionRefused(RuntimeError):
    pass


@task(name="resolve-candidate", retries=RETRIES, retry_delay_seconds=DELAY, cache_policy=NO_CACHE)
def resolve_candidate(name: str, version: str | None, tracking_uri: str | None) -> dict:
    client = registry.connect(tracking_uri)
    v = registry.get_version(client, name, version) if version else registry.alias_version(client, name, registry.CANDIDATE)
    if v is None:
        raise PromotionRefused(f"{name} has no candidate; name a version with --version")
    if v.tags.get(registry.T + "gate") != "passed":
        raise PromotionRefused(f"{name} version {v.version} did not pass its gate (gate={v.tags.get(registry.T + 'gate')})")
    champ = registry.alias_version(client, name, registry.CHAMPION)
    champ_chain = {x.version for x in registry.lineage(client, name, champ.version)}
    new = [x for x in registry.lineage(client, name, v.version) if x.version not in champ_chain]
    subjects = sorted({s for x in new for s in json.loads(x.tags.get(registry.T + "subjects", "[]"))})
    records = []
    for x in new:
        run = registry.run_json(client, x.tags[registry.T + "run_id"], "edits.json") or {}
        ok = set(json.loads(x.tags.get(registry.T + "request_ids", "[]")))
        records += [r for r in run.get("records", []) if r["request_id"] in ok]
    return {"version": v.version, "champion": champ.version, "subjects": subjects, "records": records,
            "deployment": None}


@task(name="recheck-gate", retries=0, cache_policy=NO_CACHE)
def recheck_gate(name: str, info: dict, gate_cfg: gate.GateConfig, tracking_uri: str | None, work: str) -> gate.GateVerdict:
    client = registry.connect(tracking_uri)
    base = registry.base_ref(client, name)
    champ = registry.download_delta(client, name, info["champion"], Path(work) / "champion")
    cand = registry.download_delta(client, name, info["version"], Path(work) / "candidate")
    probes, pdir = registry.download_probes(client, name, Path(work) / "probes")
    verdict = promotion.recheck(base, champ, cand, probes, pdir, info["subjects"], info["records"], gate_cfg)
    run_logger().info("re-check of version %s against champion %s: %s %s", info["version"], info["champion"],
                          "PASSED" if verdict.passed else "FAILED", "; ".join(verdict.reasons))
    return verdict


@task(name="move-champion", retries=RETRIES, retry_delay_seconds=DELAY, cache_policy=NO_CACHE)
def move_champion(name: str, version: str, action: str, note: str, tracking_uri: str | None) -> str:
    client = registry.connect(tracking_uri)
    registry.move_champion(client, name, version, action, note)
    return version


@task(name="resolve-rollback", retries=RETRIES, retry_delay_seconds=DELAY, cache_policy=NO_CACHE)
def resolve_rollback(name: str, to: str | None, tracking_uri: str | None) -> dict:
    client = registry.connect(tracking_uri)
    champ = registry.alias_version(client, name, registry.CHAMPION)
    if to:
        target = registry.get_version(client, name, to).version
    else:
        hist = registry.champion_history(client, name)
        prev = [h["version"] for h in hist if h["version"] != champ.version]
        if not prev:
            raise PromotionRefused(f"{name}: no previous champion to roll back to")
        target = prev[-1]
    return {"from": champ.version, "to": target}
