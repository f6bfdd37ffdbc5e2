"""The computing steps of an edit batch as plain functions (no Prefect, no MLflow):
validate -> environment hashes -> edit the champion sequentially -> probe answers -> plots.
`flows/edit_batch.py` calls them through `tasks/`; the registry side is `odedit.registry`."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from odedit.config import EditConfig
from odedit.lifecycle.gate import Probe
from schemas.request import EditRequest


@dataclass
class Validated:
    accepted: list[EditRequest]
    rejected: int
    image_root: str
    out_dir: str  # validation outputs: accepted.jsonl, quarantine.parquet, gx_result.json, report.json
    batch_id: str


def validate(source: str | Path, out_dir: str | Path) -> Validated:
    """Validate a request file with `odedit.requests.validate.validate_batch` (images are
    resolved against the file's directory); writes its outputs under `out_dir`."""
    from odedit.requests.validate import validate_batch

    source = Path(source)
    result = validate_batch(source, image_roots=[source.parent], out_dir=out_dir)
    return Validated(result.accepted, len(result.rejected), str(source.parent), str(out_dir),
                     result.report.batch_id)


def request_hashes(requests: Sequence[EditRequest]) -> dict[str, str]:
    from odedit.environments import request_hash

    return {r.id: request_hash(r) for r in requests}


def _sample_digest(h, s) -> None:
    h.update(s.prompt.encode())
    h.update(b"\0")
    h.update(s.target.encode())
    if s.image is not None:
        h.update(s.image.tobytes())


def environment_hashes(requests: Sequence[EditRequest], image_root: str | Path, cfg: EditConfig,
                       pool: Sequence | Callable = (), store: str | Path | None = None) -> dict[str, dict]:
    """Build every request's IN/SE/OUT environments (the same construction `run_edits` uses,
    same seed) and return a content hash and sizes of each environment set; with `store`, each
    set is also saved there as a `datasets` Dataset keyed by the request hash (`envstore`)."""
    from odedit import envstore
    from odedit.environments import build_environments

    out = {}
    for req in requests:
        p = pool(req) if callable(pool) else pool
        es = build_environments(req, image_root, cfg.odedit, p, seed=cfg.seed)
        h = hashlib.sha256()
        for env in es.train:
            h.update(env.name.encode())
            for s in env.samples:
                _sample_digest(h, s)
        out[req.id] = {"request_hash": es.request_hash, "environment_set_hash": h.hexdigest()[:16],
                       "environments": {e.name: len(e.samples) for e in es.train},
                       "heldout": {k: len(getattr(es.heldout, k)) for k in ("reliability", "t_gen", "m_gen", "t_loc", "m_loc")}}
        if store is not None:
            out[req.id]["dataset"] = str(envstore.save(es, store))
    return out


def probe_answers(adapter, probes: Sequence[Probe], image_dir: str | Path | None) -> dict[str, str]:
    from odedit.environments import load_image

    return {p.id: adapter.answer(p.prompt, load_image(p.image, image_dir) if p.image else None, max_new_tokens=4)
            for p in probes}


@dataclass
class BatchEdits:
    records: list[dict]
    summary: dict
    delta_dir: str | None  # composed delta (base -> candidate), None when no edit succeeded
    batch_delta_dir: str | None  # this batch's edits only (champion -> candidate)
    champion_answers: dict[str, str] = field(default_factory=dict)
    candidate_answers: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def edit_champion(base_model: str, champion_delta: str | Path | None, requests: Sequence[EditRequest],
                  image_root: str | Path, cfg: EditConfig, probes: Sequence[Probe], probe_dir: str | Path | None,
                  out_dir: str | Path, fault: dict[str, str] | None = None, device: str | None = None,
                  on_record: Callable | None = None) -> BatchEdits:
    """Load the base, apply the champion's delta, apply the requests one after another
    (sequential editing), and write the composed delta of the candidate under `out_dir`.
    Failed (diverged / errored) edits are left out of the candidate."""
    from odedit.delta import Delta
    from odedit.editing import run_edits
    from odedit.pools import locality_pool_for
    from odedit.lifecycle.models import load_edited, resolve_base

    t0 = time.perf_counter()
    adapter = load_edited(base_model, champion_delta, device=device)
    champ = Delta.load(champion_delta) if champion_delta and (Path(champion_delta) / "delta.json").is_file() else Delta({}, {})
    t_load = time.perf_counter() - t0
    champion_answers = probe_answers(adapter, probes, probe_dir)
    pool = locality_pool_for(adapter, resolve_base(base_model), requests, image_root, seed=cfg.seed)
    t1 = time.perf_counter()
    run = run_edits(adapter, requests, image_root, cfg, pool, sequential=True, on_record=on_record, fault=fault)
    t_edit = time.perf_counter() - t1
    candidate_answers = probe_answers(adapter, probes, probe_dir)
    out_dir = Path(out_dir)
    delta_dir = batch_dir = None
    ok = [r.request_id for r in run.records if r.status == "ok" and r.request_id in run.deltas]
    if ok:
        batch = Delta({}, {})
        for rid in ok:
            batch = batch.compose(run.deltas[rid])
        batch.meta = {"requests": ok, "method": cfg.method}
        batch_dir = str(batch.save(out_dir / "batch_delta"))
        composed = champ.compose(batch)
        composed.meta = {"requests": ok, "method": cfg.method}
        delta_dir = str(composed.save(out_dir / "delta"))
    return BatchEdits([r.to_dict() for r in run.records], run.summary(), delta_dir, batch_dir,
                      champion_answers, candidate_answers,
                      {"load_s": t_load, "edit_s": t_edit, "probe_s": time.perf_counter() - t0 - t_load - t_edit})


def plot_before_after(records: list[dict], path: str | Path) -> Path:
    """Grouped bars: mean of each held-out score before and after, over successful edits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from odedit.lifecycle.gate import SCORES

    ok = [r for r in records if r.get("status") == "ok"]

    def mean(side, name):
        vals = [(r.get(side) or {}).get(name) for r in ok]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else 0.0

    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = range(len(SCORES))
    ax.bar([x - 0.2 for x in xs], [mean("pre", s) for s in SCORES], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [mean("post", s) for s in SCORES], 0.4, label="after")
    ax.set_xticks(list(xs), [s.replace("_", "-") for s in SCORES])
    ax.set_ylim(0, 1.05)
    ax.set_title(f"held-out scores, {len(ok)} edit(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def write_json(path: str | Path, data) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=str))
    return Path(path)


def default_probes(model_path: str | Path, image_dir: str | Path) -> list[Probe]:
    """The fixed regression probe set of a base model: drawn from its world when it is the
    embedded kind (has a train_report.json), else empty (pass --probes to `registry init`)."""
    from odedit.lifecycle.gate import world_probes
    from odedit.pools import world_of

    import os

    world = world_of(model_path) if Path(str(model_path)).is_dir() else None
    if world is None:
        return []
    limit = int(os.environ.get("ODEDIT_PROBE_COUNT", "48"))  # regression cost is linear in it
    return world_probes(world, image_dir)[:limit]


def world_pool(model_path: str | Path, seed: int = 0):
    """The locality pool `run_edits` will use for a world model, or () for other models."""
    from odedit.pools import POOL_SIZE, world_of

    world = world_of(model_path) if Path(str(model_path)).is_dir() else None
    if world is None:
        return ()
    return lambda req: world.locality_pool(POOL_SIZE, req.subject or "", seed=seed)


def audit_rows(requests: Sequence[EditRequest]) -> dict[str, dict]:
    """What the audit trail keeps of each request besides its scores."""
    keep = ("requester", "reason", "ticket", "submitted_at", "src", "alt", "pred", "subject", "image")
    return {r.id: {k: (str(getattr(r, k)) if getattr(r, k) is not None else None) for k in keep} for r in requests}


def json_list(items) -> str:
    return json.dumps(list(items))
