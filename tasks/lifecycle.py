"""Tasks of promotion and rollback (odedit.registry + odedit.lifecycle.promotion)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import run_logger, transient_only

from odedit import registry
from odedit.lifecycle import gate, promotion
from tasks.registry import DELAY, RETRIES


class PromotionRefused(RuntimeError):
    pass


@task(name="resolve-candidate", retries=RETRIES, retry_delay_seconds=DELAY, cache_policy=NO_CACHE,
      retry_condition_fn=transient_only)
def resolve_candidate(name: str, version: str | None, tracking_uri: str | None) -> dict:
    client = registry.connect(tracking_uri)
    try:  # never promote over a champion that was moved outside odedit (unaudited)
        registry.check_champion_audited(client, name)
    except registry.RegistryUnavailable:
        raise
    except registry.RegistryError as exc:
        raise PromotionRefused(str(exc)) from None
    v = registry.get_version(client, name, version) if version else registry.alias_version(client, name, registry.CANDIDATE)
    if v is None:
        raise PromotionRefused(f"{name} has no candidate; name a version with --version")
    if v.tags.get(registry.T + "gate") != "passed":
        raise PromotionRefused(f"{name} version {v.version} did not pass its gate (gate={v.tags.get(registry.T + 'gate')})")
    champ = registry.alias_version(client, name, registry.CHAMPION)
    if champ is None:
        raise PromotionRefused(f"{name} has no champion")
    if v.version != champ.version and not registry.descends(client, name, v.version, champ.version):
        chain = " -> ".join(x.version for x in reversed(registry.lineage(client, name, v.version)))
        raise PromotionRefused(
            f"{name} version {v.version} does not descend from the champion (version {champ.version}); its "
            f"lineage is {chain}. Promoting it would drop the champion's edits: re-submit its requests as a "
            f"batch on the champion instead")
    champ_chain = {x.version for x in registry.lineage(client, name, champ.version)}
    new = [x for x in registry.lineage(client, name, v.version) if x.version not in champ_chain]
    subjects = sorted({s for x in new for s in json.loads(x.tags.get(registry.T + "subjects", "[]"))})
    records = []
    for x in new:
        run = registry.run_json(client, x.tags[registry.T + "run_id"], "edits.json") or {}
        ok = set(json.loads(x.tags.get(registry.T + "request_ids", "[]")))
        records += [r for r in run.get("records", []) if r["request_id"] in ok]
    final = registry.run_json(client, v.tags[registry.T + "run_id"], "final_scores.json") or {}
    return {"version": v.version, "champion": champ.version, "subjects": subjects, "records": records,
            "final_metrics": {k: final.get("metrics", {}).get(k) for k in ("batch_retention", "prior_retention")
                              if k in final.get("metrics", {})},
            "deployment": None}


@task(name="recheck-gate", retries=0, cache_policy=NO_CACHE)
def recheck_gate(name: str, info: dict, gate_cfg: gate.GateConfig, tracking_uri: str | None, work: str) -> gate.GateVerdict:
    client = registry.connect(tracking_uri)
    base = registry.base_ref(client, name)
    from odedit.lifecycle.ledger import edited_facts, load_ledger

    # the re-check runs on the artifacts that will be served, downloaded through the verifying
    # path: a version whose artifacts differ from its registered digests is refused here
    try:
        champ = registry.download_delta(client, name, info["champion"], Path(work) / "champion")
        cand, cand_ledger = registry.download_version(client, name, info["version"], Path(work) / "candidate")
    except registry.IntegrityError as exc:
        run_logger().warning("re-check of version %s refused: IntegrityError: %s", info["version"], exc)
        return gate.GateVerdict(False, [f"IntegrityError: {exc}"], {}, {})
    probes, pdir = registry.download_probes(client, name, Path(work) / "probes")
    targets, values = edited_facts(load_ledger(cand_ledger).live())
    verdict = promotion.recheck(base, champ, cand, probes, pdir, targets, info["records"], gate_cfg,
                                info.get("final_metrics"), values)
    run_logger().info("re-check of version %s against champion %s: %s %s", info["version"], info["champion"],
                          "PASSED" if verdict.passed else "FAILED", "; ".join(verdict.reasons))
    return verdict


@task(name="move-champion", retries=RETRIES, retry_delay_seconds=DELAY, cache_policy=NO_CACHE,
      retry_condition_fn=transient_only)
def move_champion(name: str, version: str, action: str, note: str, tracking_uri: str | None,
                  actor: str | None = None) -> str:
    client = registry.connect(tracking_uri)
    registry.move_champion(client, name, version, action, note, actor)
    return version


def alias_moved_outside(name: str, tracking_uri: str | None) -> bool:
    """True when the champion alias is not where odedit's champion history last put it."""
    try:
        registry.check_champion_audited(registry.connect(tracking_uri), name)
    except registry.RegistryUnavailable:
        raise
    except registry.RegistryError:
        return True
    return False


def previous_champion(hist: list[dict], current: str) -> str | None:
    """The champion before `current` in the champion history, walking back past every version
    that was itself rolled back from (so repeated rollbacks go further back instead of
    toggling between two versions)."""
    rolled_back_from = {str(h.get("from")) for h in hist if h.get("action") == "rollback" and h.get("from")}
    for h in reversed(hist):
        v = str(h["version"])
        if v != str(current) and v not in rolled_back_from:
            return v
    return None


def rollback_allowed(version) -> str | None:
    """None when `version` may become champion by rollback (its gate passed, or it is the
    base), else the reason it may not."""
    kind, gate_tag = version.tags.get(registry.T + "kind"), version.tags.get(registry.T + "gate")
    if kind == "base" or gate_tag == "passed":
        return None
    return f"version {version.version} did not pass its gate (gate={gate_tag or 'none'}, kind={kind or 'none'})"


@task(name="resolve-rollback", retries=RETRIES, retry_delay_seconds=DELAY, cache_policy=NO_CACHE,
      retry_condition_fn=transient_only)
def resolve_rollback(name: str, to: str | None, tracking_uri: str | None, force: bool = False,
                     note: str = "") -> dict:
    """Where `champion` goes back to: version `to`, or the previous champion. Only versions
    whose gate passed (or the base) unless `force` with a `note` (recorded in the history)."""
    client = registry.connect(tracking_uri)
    champ = registry.alias_version(client, name, registry.CHAMPION)
    if champ is None:
        raise PromotionRefused(f"{name} has no champion")
    if to:
        target = registry.get_version(client, name, to)
    else:
        prev = previous_champion(registry.champion_history(client, name), champ.version)
        if prev is None:
            raise PromotionRefused(f"{name}: no previous champion to roll back to")
        target = registry.get_version(client, name, prev)
    why = rollback_allowed(target)
    if why and not force:
        raise PromotionRefused(f"rollback of {name} to {why}; use --force with --note to do it anyway")
    if why and not note.strip():
        raise PromotionRefused(f"rollback of {name} to {why}: --force needs a --note saying why")
    # what becomes champion is served: its artifacts must match its registered digests (even
    # with --force; an empty delta of a forced, ungated version is the operator's call)
    import tempfile

    from odedit.lifecycle import state

    with tempfile.TemporaryDirectory(dir=state.work_dir()) as tmp:
        try:
            registry.download_model(client, name, target.version, tmp, check_delta=not why)
        except registry.IntegrityError as exc:
            raise PromotionRefused(f"rollback of {name} refused: IntegrityError: {exc}") from exc
    return {"from": champ.version, "to": target.version, "forced": bool(why)}
