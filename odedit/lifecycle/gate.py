"""The promotion gate: thresholds per deployment, checked on held-out probes, plus a
regression check on the champion's fixed probe set. Pure functions; no Prefect, no MLflow.

Two kinds of evidence decide a batch:
  1. the post-edit EditScores of every successful edit. `run_edits` measures them on the
     request's HELD-OUT probes (rephrasings, other images, unrelated facts) that optimisation
     never saw, so they are exactly the generality/locality a user will get;
  2. a regression check: the answers of the champion on a fixed probe set (stored with the
     registered model at bootstrap) must not change, except where the new answer is the target
     of a live edit about the probe's subject (an intended change).
Since the final-model gate (`odedit.lifecycle.final`), the per-edit scores the thresholds apply
to are measured on the FINAL candidate (record["final"]), not right after each edit, and two
retention floors apply: `min_batch_retention` (mean reliability of this batch's edits on the
final model) and `min_prior_retention` (the same over earlier, not superseded ledger edits).

A config file maps deployment names to thresholds; `default` applies where a deployment has
no entry, and a deployment's entry overrides `default` key by key.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

SCORES = ("reliability", "t_generality", "m_generality", "t_locality", "m_locality")
# Locality protocol the thresholds apply to (odedit.metrics): "answer" (answer positions; the
# default, what the thresholds were set on) or "easyedit" (EasyEdit's whole-sequence, last-L
# aligned top-k match; ~54 % M-Loc where "answer" gives ~94 % on the same edits). Both are
# always computed and reported; only the named one is gated.
LOCALITY_SCORES = ("t_locality", "m_locality")


def score_key(name: str, protocol: str) -> str:
    """The record key holding score `name` under locality protocol `protocol`."""
    return f"{name}_easyedit" if protocol == "easyedit" and name in LOCALITY_SCORES else name
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "gate.yaml"


@dataclass
class GateConfig:
    aggregate: dict[str, float] = field(default_factory=dict)  # mean post score over ok edits >=
    per_edit: dict[str, float] = field(default_factory=dict)  # every ok edit's post score >=
    max_regression_fraction: float = 0.0  # champion probes allowed to change (unintended changes)
    # the same against the BASE model's answers: drift that batches add up, each under the
    # per-batch bound, is bounded too (None: not checked)
    max_base_regression_fraction: float | None = None
    min_ok_edits: int = 1  # fewer successful edits than this fails the gate
    min_batch_retention: float = 0.0  # mean final-model reliability of this batch's edits >=
    min_prior_retention: float = 0.0  # mean final-model reliability of earlier live edits >=
    locality_protocol: str = "answer"  # which locality protocol the thresholds apply to
    # an edit whose reliability right after its own optimisation is below this did not take:
    # it is undone, recorded `unreached` and left pending (odedit.editing.run_edits)
    min_edit_reliability: float = 0.0

    def __post_init__(self):
        if self.locality_protocol not in ("answer", "easyedit"):
            raise ValueError(f"locality_protocol must be 'answer' or 'easyedit', got {self.locality_protocol!r}")
        for name in ("min_batch_retention", "min_prior_retention", "max_regression_fraction", "min_edit_reliability",
                     "max_base_regression_fraction"):
            if getattr(self, name) is None:
                continue
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for name in list(self.aggregate) + list(self.per_edit):
            if name not in SCORES:
                raise ValueError(f"unknown score {name!r} in gate config; use one of {', '.join(SCORES)}")

    def to_dict(self) -> dict:
        return asdict(self)


def _read(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    return json.loads(text)


def load_gate_config(path: str | Path | None = None, deployment: str | None = None) -> GateConfig:
    """Thresholds of `deployment` from a YAML/TOML/JSON file (default configs/gate.yaml)."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = _read(path)
    merged: dict = {}
    sections = [data.get("default", {})]
    if deployment and deployment in data.get("deployments", {}):
        sections.append(data["deployments"][deployment])
    for sec in sections:
        for k, v in (sec or {}).items():
            merged[k] = (dict(merged.get(k, {})) | dict(v)) if isinstance(v, Mapping) and v else (dict(v) if isinstance(v, Mapping) else v)
    return GateConfig(**merged)


@dataclass
class Probe:
    """A fixed regression probe: a prompt, an optional image (path relative to the probe
    set's directory), and the subject it is about (probes of edited subjects may change)."""

    id: str
    prompt: str
    image: str | None = None
    subject: str | None = None


def probes_to_jsonl(probes: Iterable[Probe]) -> str:
    return "".join(json.dumps(asdict(p)) + "\n" for p in probes)


def probes_from_jsonl(text: str) -> list[Probe]:
    return [Probe(**json.loads(line)) for line in text.splitlines() if line.strip()]


def world_probes(world, image_dir: str | Path, per_entity: int = 2, seed: int = 0) -> list[Probe]:
    """A fixed probe set from the embedded model's world: for each entity one image question
    and one text question (per_entity=2), rendered images saved under `image_dir`."""
    import numpy as np

    from odedit.models.world import IMAGE_KINDS, TEXT_KINDS

    rng = np.random.default_rng([world.seed, 23, seed])
    out: list[Probe] = []
    for ent in world.entities:
        for j in range(per_entity):
            if j % 2 == 0:
                kind = IMAGE_KINDS[int(rng.integers(len(IMAGE_KINDS)))]
                img = world.save_image(ent, int(rng.choice(world.train_views)), image_dir)
                out.append(Probe(f"p{len(out):03d}", world.question(ent, kind, True, False, rng), img, ent.name))
            else:
                kind = TEXT_KINDS[int(rng.integers(len(TEXT_KINDS)))]
                out.append(Probe(f"p{len(out):03d}", world.question(ent, kind, False, False, rng), None, ent.name))
    return out


def _norm_answer(a) -> str:
    return " ".join(str(a or "").lower().split())


def regression_check(probes: list[Probe], champion: Mapping[str, str], candidate: Mapping[str, str],
                     intended: Mapping[str, Iterable[str]] | None = None,
                     edited: Mapping[str, Iterable[str]] | None = None) -> dict:
    """Which fixed probes changed their answer between champion and candidate. A change is
    exempt (an intended change) only when the probe's new answer equals the target of a live
    edit about the probe's subject (`intended`: subject -> targets of live edits), or when the
    probe asks a fact a live edit changed: its champion answer was that fact's old or new
    value (`edited`: subject -> `pred` and target of live edits; `ledger.edited_facts`). Every
    other change counts, edited subject or not."""
    wanted = {str(k).lower(): {_norm_answer(t) for t in v} for k, v in (intended or {}).items()}
    facts = {str(k).lower(): {_norm_answer(t) for t in v if t} for k, v in (edited or {}).items()}
    changed, exempt = [], []
    for p in probes:
        old, new = champion.get(p.id), candidate.get(p.id)
        if old == new:
            continue
        row = {"probe": p.id, "prompt": p.prompt, "image": p.image, "subject": p.subject,
               "champion": old, "candidate": new}
        subj = (p.subject or "").lower()
        if subj and (_norm_answer(new) in wanted.get(subj, set()) or _norm_answer(old) in facts.get(subj, set())):
            exempt.append(row)
        else:
            changed.append(row)
    n = len(probes)
    return {"checked": n, "changed": changed, "intended": exempt,
            "changed_fraction": len(changed) / n if n else 0.0}


@dataclass
class GateVerdict:
    passed: bool
    reasons: list[str]
    metrics: dict[str, float | None]
    config: dict
    edits_ok: int = 0
    edits_failed: int = 0
    regression: dict | None = None
    locality_protocol: str = "answer"  # the protocol of the gated t_locality / m_locality

    def to_dict(self) -> dict:
        return asdict(self)


def _num(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _gated(r: Mapping) -> Mapping:
    """The scores thresholds apply to: the final-model scores when measured, else post."""
    return r.get("final") or r.get("post") or {}


def evaluate_gate(records: list[Mapping], cfg: GateConfig, regression: dict | None = None,
                  final_metrics: Mapping[str, float | None] | None = None,
                  base_regression: dict | None = None) -> GateVerdict:
    """Verdict on a batch from its edit records (EditRecord.to_dict(), with a `final` dict of
    final-model scores when `odedit.lifecycle.final` measured them), the regression results
    (against the champion, and against the base model) and the final-model aggregates
    (`batch_retention`, `prior_retention`, ...).

    Only successful edits enter the candidate; diverged/errored edits are left out of it (and
    stay pending for a rerun), they do not fail the gate on their own."""
    ok = [r for r in records if r.get("status") == "ok"]
    reasons: list[str] = []
    metrics: dict[str, float | None] = {}
    proto = cfg.locality_protocol

    def mean(key: str, pick) -> float | None:
        vals = [_num(pick(r).get(key)) for r in ok]
        vals = [v for v in vals if v is not None]
        return math.fsum(vals) / len(vals) if vals else None

    for name in SCORES:  # `final.<name>` = the gated value (locality under `proto`)
        key = score_key(name, proto)
        metrics[f"final.{name}"] = mean(key, _gated)
        metrics[f"post.{name}"] = mean(key, lambda r: r.get("post") or {})
        metrics[f"pre.{name}"] = mean(key, lambda r: r.get("pre") or {})
    for name in LOCALITY_SCORES:  # both protocols, tagged (MLflow rejects '@': '/' separates)
        for p in ("answer", "easyedit"):
            metrics[f"final.{name}/{p}"] = mean(score_key(name, p), _gated)
    tag = {n: f"{n}@{proto}" if n in LOCALITY_SCORES else n for n in SCORES}
    if len(ok) < cfg.min_ok_edits:
        reasons.append(f"only {len(ok)} successful edit(s); the gate needs at least {cfg.min_ok_edits}")
    for name, floor in cfg.aggregate.items():
        v = metrics[f"final.{name}"]
        if v is not None and v < floor:
            reasons.append(f"mean held-out {tag[name]} {v:.3f} < {floor}")
    for name, floor in cfg.per_edit.items():
        for r in ok:
            v = _num(_gated(r).get(score_key(name, proto)))
            if v is not None and v < floor:
                reasons.append(f"edit {r.get('request_id')}: held-out {tag[name]} {v:.3f} < {floor}")
    fm = dict(final_metrics or {})
    for k in ("batch_retention", "prior_retention"):
        if k in fm:
            metrics[k] = _num(fm[k])
    br, pr = metrics.get("batch_retention"), metrics.get("prior_retention")
    if br is not None and br < cfg.min_batch_retention:
        lost = [r.get("request_id") for r in ok if (r.get("final") or {}).get("status") == "lost"]
        reasons.append(f"batch retention {br:.3f} < {cfg.min_batch_retention} on the final model"
                       + (f" (lost: {', '.join(lost)})" if lost else ""))
    if pr is not None and pr < cfg.min_prior_retention:
        reasons.append(f"retention of earlier edits {pr:.3f} < {cfg.min_prior_retention} on the final model")
    if regression is not None:
        metrics["regression.changed_fraction"] = regression["changed_fraction"]
        if regression["changed_fraction"] > cfg.max_regression_fraction:
            reasons.append(
                f"{len(regression['changed'])}/{regression['checked']} champion probe answer(s) changed "
                f"({regression['changed_fraction']:.3f} > {cfg.max_regression_fraction})")
    if base_regression is not None and cfg.max_base_regression_fraction is not None:
        metrics["regression_base.changed_fraction"] = base_regression["changed_fraction"]
        if base_regression["changed_fraction"] > cfg.max_base_regression_fraction:
            reasons.append(
                f"{len(base_regression['changed'])}/{base_regression['checked']} probe answer(s) differ from the BASE "
                f"model ({base_regression['changed_fraction']:.3f} > {cfg.max_base_regression_fraction})")
    return GateVerdict(not reasons, reasons, metrics, cfg.to_dict(), len(ok), len(records) - len(ok), regression,
                       proto)


def checks(verdict: GateVerdict) -> list[dict]:
    """Every threshold the verdict applied, with the value it was checked against: one dict per
    check (name, value, op, threshold, ok), for logs and reports. Per-edit floors are not listed
    here: each edit under one is named in the verdict's reasons."""
    cfg, m, proto = verdict.config, verdict.metrics, verdict.locality_protocol
    out = []

    def add(name, value, op, threshold):
        ok = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append({"name": name, "value": value, "op": op, "threshold": threshold, "ok": ok})

    add("successful edits", float(verdict.edits_ok), ">=", float(cfg.get("min_ok_edits", 1)))
    for name, floor in (cfg.get("aggregate") or {}).items():
        label = f"mean {name}@{proto}" if name in LOCALITY_SCORES else f"mean {name}"
        add(label, m.get(f"final.{name}"), ">=", floor)
    for key, label in (("min_batch_retention", "batch_retention"), ("min_prior_retention", "prior_retention")):
        if m.get(label) is not None:
            add(label, m.get(label), ">=", cfg.get(key, 0.0))
    if "regression.changed_fraction" in m:
        add("regression changed fraction", m["regression.changed_fraction"], "<=", cfg.get("max_regression_fraction", 0.0))
    if "regression_base.changed_fraction" in m:
        add("regression vs base changed fraction", m["regression_base.changed_fraction"], "<=",
            cfg.get("max_base_regression_fraction"))
    return out


def format_checks(verdict: GateVerdict) -> list[str]:
    """One human line per check: `mean reliability 1.000 >= 0.9 ok`."""
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"
    return [f"{c['name']} {fmt(c['value'])} {c['op']} {c['threshold']} "
            f"{'ok' if c['ok'] else ('n/a' if c['ok'] is None else 'FAILED')}" for c in checks(verdict)]
