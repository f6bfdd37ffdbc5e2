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


def validate(source: str | Path, out_dir: str | Path, image_root: str | Path | None = None) -> Validated:
    """Validate a request file with `odedit.requests.validate.validate_batch` (images are
    resolved against `image_root`, default the file's directory); writes its outputs under `out_dir`."""
    from odedit.requests.validate import validate_batch

    source = Path(source)
    root = Path(image_root) if image_root else source.parent
    result = validate_batch(source, image_roots=[root], out_dir=out_dir)
    return Validated(result.accepted, len(result.rejected), str(root), str(out_dir), result.report.batch_id)


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


_BASE_ANSWERS: dict[tuple, dict[str, str]] = {}


def base_probe_answers(base_ref: str, probes: Sequence[Probe], image_dir: str | Path | None,
                       device: str | None = None) -> dict[str, str]:
    """The BASE model's answers to the fixed probes (the anchor of the gate's drift bound),
    computed once per process for a (base, probe set)."""
    from odedit.lifecycle.models import load_edited

    key = (str(base_ref), str(image_dir), tuple(p.id for p in probes), tuple(p.prompt for p in probes))
    if key not in _BASE_ANSWERS:
        _BASE_ANSWERS[key] = probe_answers(load_edited(base_ref, None, device=device), probes, image_dir)
    return _BASE_ANSWERS[key]


def probe_answers(adapter, probes: Sequence[Probe], image_dir: str | Path | None) -> dict[str, str]:
    from odedit.environments import load_image

    got = adapter.answers([(p.prompt, load_image(p.image, image_dir) if p.image else None) for p in probes],
                          max_new_tokens=4)
    return {p.id: a for p, a in zip(probes, got)}


def _prior_samples(prior: Sequence[EditRequest], prior_image_root: str | Path | None) -> list:
    """The champion's live edits as `Kept` items: the sample that must keep its target, the
    subject, and the answer the edit replaced (no longer knowledge to preserve)."""
    from odedit.editing import Kept, subject_of
    from odedit.environments import load_image
    from odedit.models.adapter import Sample

    return [Kept(Sample(r.src, r.alt, load_image(r.image, prior_image_root)), subject_of(r), r.pred) for r in prior]


def _prior_support(prior: Sequence[EditRequest], prior_image_root: str | Path | None, cfg: EditConfig) -> list:
    """PRODUCT (lifelong): the SE samples (train rephrasings, train images) of the champion's
    live edits, with their subjects, for the null-space bank - what an edit of this batch adds
    to the bank when it lands, so an edit of an earlier batch is protected like one of this
    batch (bucketed under its own target: a later edit of the same fact releases them)."""
    from odedit.editing import Kept, subject_of
    from odedit.environments import build_environments

    out = []
    for r in prior:
        es = build_environments(r, prior_image_root, cfg.odedit, (), seed=cfg.seed)
        out += [Kept(s, subject_of(r)) for e in es.train if e.kind == "SE" for s in e.samples]
    return out


def _edit_loaded(adapter, base_model: str, champ, requests: Sequence[EditRequest], image_root, cfg: EditConfig,
                 out_dir: Path, fault, on_record, prior: Sequence[EditRequest], prior_root: str | Path | None,
                 min_reliability: float | None = None, baselines=None) -> tuple:
    """Edit the loaded champion with `requests` in sequence, the champion ledger's live edits
    (`prior`, images under `prior_root`) kept; write the composed and the batch delta. With
    `baselines` (the champion's, per request), each edit's `pre` is its baseline and only its
    reliability is scored right after it (`run_edits`)."""
    from odedit.delta import Delta
    from odedit.editing import run_edits
    from odedit.lifecycle.models import resolve_base
    from odedit.lifecycle.state import key_cache_dir
    from odedit.pools import current_answers, locality_pool_for, preservation_of, world_of

    base = resolve_base(base_model)
    # a non-world model's OUT pool and preservation set are the batch's prompts with the current
    # answers: generate them once for both
    answers = current_answers(adapter, requests, image_root) if cfg.base.null_space and world_of(base) is None else None
    pool = locality_pool_for(adapter, base, requests, image_root, seed=cfg.seed, answers=answers)
    preserve = preservation_of(adapter, base, requests, image_root, cfg, answers=answers) \
        + _prior_support(prior, prior_root, cfg) if cfg.base.null_space else ()
    t1 = time.perf_counter()
    run = run_edits(adapter, requests, image_root, cfg, pool, sequential=True, on_record=on_record, fault=fault,
                    keep=_prior_samples(prior, prior_root), preserve=preserve, min_reliability=min_reliability,
                    key_cache=key_cache_dir() if cfg.base.null_space else None,
                    baselines=baselines)
    t_edit = time.perf_counter() - t1
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
    return run, delta_dir, batch_dir, t_edit


def _load_champion_delta(champion_delta):
    from odedit.delta import Delta

    if champion_delta and (Path(champion_delta) / "delta.json").is_file():
        return Delta.load(champion_delta)
    return Delta({}, {})


@dataclass
class BatchOutcome:
    """Everything one batch computed (no registry I/O): see `edit_and_gate`."""

    records: list[dict]  # EditRecord.to_dict() + "final": final-model scores and status
    summary: dict
    final: dict  # FinalScores.to_dict(): batch / prior per-edit scores, regression, metrics
    verdict: object  # gate.GateVerdict
    delta_dir: str | None  # composed delta (base -> candidate); None when no edit succeeded
    batch_delta_dir: str | None  # this batch's edits only
    ledger_dir: str | None  # the candidate's ledger (parent entries re-measured + this batch)
    champion_answers: dict[str, str] = field(default_factory=dict)
    candidate_answers: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.verdict.passed) and self.delta_dir is not None

    @property
    def ok_ids(self) -> list[str]:
        return [r["request_id"] for r in self.records if r["status"] == "ok"]


def edit_and_gate(base_ref: str, champion_delta: str | Path | None, champion_ledger, requests: Sequence[EditRequest],
                  image_root: str | Path, cfg: EditConfig, probes: Sequence[Probe], probe_dir: str | Path | None,
                  gate_cfg, out_dir: str | Path, *, fault: dict[str, str] | None = None, device: str | None = None,
                  on_record: Callable | None = None, batch_id: str | None = None, run_id: str | None = None,
                  parent_version: str | None = None, hashes: dict[str, str] | None = None) -> BatchOutcome:
    """The whole computing part of one batch, in process, without MLflow:

    1. load base + champion delta; answer the fixed probes; take every request's pre-batch
       Baseline (held-out scores and locality logits) on the champion, BEFORE any edit;
    2. edit sequentially (the champion ledger's live edits passed to the editor as `keep`); an
       edit below the gate's `min_edit_reliability` right after optimisation is undone and
       recorded `unreached` (left out, pending), so one stubborn fact does not sink the batch;
    3. reload base + the composed delta (exactly what would be registered) and score it with
       `odedit.lifecycle.final.score_final`: this batch's edits, every earlier ledger edit,
       the regression probes;
    4. gate (`gate.evaluate_gate` on the final-model scores) and write the candidate's
       ledger under `out_dir`/ledger and every final-model score with the verdict to
       `out_dir`/final.json.

    `champion_ledger`: a `Ledger`, a ledger directory, or None (empty). To chain batches,
    feed `outcome.delta_dir` and `outcome.ledger_dir` of batch k as champion delta and ledger
    of batch k+1 (only when `outcome.passed`). `parent_version` names the version that carries
    `champion_ledger` (recorded on its entries that have none)."""
    from odedit import evaluate
    from odedit.environments import build_environments
    from odedit.lifecycle import gate as gate_mod
    from odedit.lifecycle.final import BatchItem, score_final
    from odedit.lifecycle.ledger import Ledger, entry_from_request, load_ledger
    from odedit.lifecycle.models import load_edited

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = champion_ledger if isinstance(champion_ledger, Ledger) else load_ledger(champion_ledger)
    prior, prior_root = ledger.live_requests()
    hashes = hashes or request_hashes(requests)
    t0 = time.perf_counter()
    bounds_drift = getattr(gate_cfg, "max_base_regression_fraction", None) is not None
    # the base's answers first (one model in memory at a time), only when the gate bounds drift
    base_answers = base_probe_answers(base_ref, probes, probe_dir, device) if bounds_drift and champion_delta else None
    adapter = load_edited(base_ref, champion_delta, device=device)
    champ = _load_champion_delta(champion_delta)
    champion_answers = probe_answers(adapter, probes, probe_dir)
    if bounds_drift and not champion_delta:
        base_answers = champion_answers  # the champion is the base
    held = {r.id: build_environments(r, image_root, cfg.odedit, (), seed=cfg.seed).heldout for r in requests}
    before = evaluate.baselines(adapter, held)
    t_load = time.perf_counter() - t0
    run, delta_dir, batch_dir, t_edit = _edit_loaded(adapter, base_ref, champ, requests, image_root, cfg, out_dir,
                                                     fault, on_record, prior, prior_root,
                                                     getattr(gate_cfg, "min_edit_reliability", None) or None,
                                                     before)
    del adapter
    t2 = time.perf_counter()
    records = [r.to_dict() for r in run.records]
    ok_ids = [r["request_id"] for r in records if r["status"] == "ok"]
    ledger_dir = None
    if delta_dir is not None:
        final_model = load_edited(base_ref, delta_dir, device=device)
        store = out_dir / "ledger"
        by_id = {r.id: r for r in requests}
        new = [entry_from_request(by_id[rid], hashes[rid], image_root, store, batch_id, run_id) for rid in ok_ids]
        items = [BatchItem(e, held[e.request_id], before[e.request_id]) for e in new]
        redone = {e.request_hash for e in new}  # a lost / superseded edit submitted again replaces its entry
        ledger = Ledger([e for e in ledger.entries if e.request_hash not in redone], ledger.root)
        fs = score_final(final_model, items, store, ledger.entries, ledger.root, probes, probe_dir, champion_answers,
                         base_answers)
        for r in records:
            if r["request_id"] in fs.batch:
                r["final"] = fs.batch[r["request_id"]]
        for e in new:
            e.status, e.scores = fs.batch[e.request_id]["status"], dict(fs.batch[e.request_id])
        child = ledger.extend(parent_version, new)
        for e in child.entries:
            if e.request_hash in fs.prior and not any(e is n for n in new):
                p = fs.prior[e.request_hash]
                e.status, e.scores = p["status"], {"reliability": p["reliability"], "superseded_by": p["superseded_by"]}
        ledger_dir = str(child.save(store))
        verdict = gate_mod.evaluate_gate(records, gate_cfg, fs.regression, fs.metrics, fs.base_regression or None)
        (out_dir / "final.json").write_text(json.dumps({"verdict": verdict.to_dict(), **fs.to_dict()},
                                                       indent=1, default=str))
        final, cand_answers = fs.to_dict(), fs.candidate_answers
    else:
        verdict = gate_mod.evaluate_gate(records, gate_cfg, None)
        final, cand_answers = {}, dict(champion_answers)
    return BatchOutcome(records, run.summary(), final, verdict, delta_dir, batch_dir, ledger_dir, champion_answers,
                        cand_answers, {"load_s": t_load, "edit_s": t_edit, "final_s": time.perf_counter() - t2})


def plot_before_after(records: list[dict], path: str | Path) -> Path:
    """Grouped bars: mean of each held-out score before (the champion) and after (the final
    model, as registered; right after each edit where no final scores exist), over successful edits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from odedit.lifecycle.gate import SCORES

    ok = [r for r in records if r.get("status") == "ok"]

    def mean(side, name):
        scores = [(r.get("final") or r.get("post") if side == "after" else r.get(side)) or {} for r in ok]
        vals = [sc.get(name) for sc in scores]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else 0.0

    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = range(len(SCORES))
    ax.bar([x - 0.2 for x in xs], [mean("pre", s) for s in SCORES], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [mean("after", s) for s in SCORES], 0.4, label="after")
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


def rejected_by_reason(validation_dir: str | Path) -> dict[str, int]:
    """Primary reason code -> rejected rows, from the validator's report.json ({} if absent)."""
    report = Path(validation_dir) / "report.json"
    if not report.is_file():
        return {}
    return dict(json.loads(report.read_text()).get("rejected_by_reason") or {})


def audit_rows(requests: Sequence[EditRequest]) -> dict[str, dict]:
    """What the audit trail keeps of each request besides its scores."""
    keep = ("requester", "reason", "ticket", "submitted_at", "src", "alt", "pred", "subject", "image")
    return {r.id: {k: (str(getattr(r, k)) if getattr(r, k) is not None else None) for k in keep} for r in requests}


def json_list(items) -> str:
    return json.dumps(list(items))
