"""Scoring what is registered: the FINAL candidate model (after the whole batch), pure
(no Prefect, no MLflow).

The gate used to score each edit right after that edit, while later edits of the batch were
applied on top; earlier batches' edits were never re-checked. `score_final` measures, on the
final model:
  (a) every successful edit of this batch: reliability on its edit prompt + image and its
      held-out T-Gen / M-Gen / T-Loc / M-Loc (locality against the champion's PRE-BATCH
      logits, taken before any edit of the batch);
  (b) every earlier ledger edit: reliability (and whether it holds, was superseded, or lost; an
      entry superseded in the parent ledger stays superseded unless it answers its target);
  (c) the fixed regression probes: an answer that changed counts unless the new answer is the
      target of a live edit about the probe's subject (an intended change), or the probe asks
      a fact a live edit changed (its champion answer was that fact's old or new value).
A batch item's locality probe that asks about a fact a live edit changed on purpose (another
edit of the batch, or an earlier ledger edit) is not a probe of unrelated knowledge: it is left
out of the item's locality (`intended_changes`, counted in `metrics`), whatever it answers now
(a half-generalised edit's other phrasings drift from batch to batch: measured, bench/README).
"About an edited fact": the probe names the edit's subject (text) or shows one of the edit's
own images (image, same bytes), and its recorded answer is the answer the edit replaced
(`pred`). The world benchmark's scorer leaves out the same probes from its world knowledge.
Within one batch nothing is superseded: a batch whose second edit undoes its first loses its
first edit and fails `min_batch_retention`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from odedit.lifecycle.gate import SCORES, Probe, regression_check
from odedit.lifecycle.ledger import LedgerEntry, edited_facts, same_thing, status_of

HOLDS = 0.999


@dataclass
class BatchItem:
    """One successful edit of the batch: its ledger entry (request + image hash), its held-out
    probes (odedit.environments.HeldOut) and the champion's pre-batch Baseline on them."""

    entry: LedgerEntry
    heldout: object
    before: object


@dataclass
class FinalScores:
    batch: dict[str, dict] = field(default_factory=dict)  # request id -> five scores + status
    prior: dict[str, dict] = field(default_factory=dict)  # request HASH -> request id, reliability, status
    regression: dict = field(default_factory=dict)
    base_regression: dict = field(default_factory=dict)  # the same against the base model (when asked)
    metrics: dict[str, float | None] = field(default_factory=dict)
    candidate_answers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(vals) -> float | None:
    vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    return math.fsum(vals) / len(vals) if vals else None


def answers_with(adapter, prompt: str, image, target: str) -> float | None:
    """Teacher-forced token accuracy of `target` after (image, prompt) on `adapter`."""
    from odedit import evaluate
    from odedit.models.adapter import Sample

    return evaluate.accuracy(adapter, [Sample(prompt, target, image)])


def _names(prompt: str, subject: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", prompt, re.IGNORECASE) is not None


def _edit_images(entry: LedgerEntry) -> set[str]:
    """Stems (sha256 of the bytes, ledger form) of the images that show the edit's subject."""
    r = entry.request
    paths = ([r["image"]] if r.get("image") else []) + list(r.get("image_rephrase") or []) \
        + list(r.get("train_image_rephrase") or [])
    return {Path(p).stem for p in paths}


def intended_changes(item: BatchItem, edits: Sequence[LedgerEntry]) -> dict[str, list[bool]]:
    """Per locality probe of `item` ("t_loc", "m_loc" -> flags): True when the probe asks about a
    fact one of `edits` changed on purpose (see the module doc): not unrelated knowledge, so
    whatever it answers now is no leak."""
    from odedit.lifecycle.gate import _norm_answer

    facts = [(e.subject, _edit_images(e), _norm_answer(e.request["pred"])) for e in edits if e.request.get("pred")]
    req = item.entry.request
    out = {}
    for kind, samples, images in (("t_loc", item.heldout.t_loc, [None] * len(item.heldout.t_loc)),
                                  ("m_loc", item.heldout.m_loc, [Path(p).stem for p in req.get("m_loc") or []])):
        out[kind] = [any(was == _norm_answer(s.target) and
                         ((stem in shown) if stem is not None else bool(subject and _names(s.prompt, subject)))
                         for subject, shown, was in facts)
                     for s, stem in zip(samples, images)]
    return out


def _entry_image(entry: LedgerEntry, root: str | Path | None):
    from odedit.environments import load_image

    return load_image(entry.request["image"], root)


def score_final(adapter, batch: Sequence[BatchItem], batch_image_root: str | Path | None,
                prior: Sequence[LedgerEntry], prior_image_root: str | Path | None,
                probes: Sequence[Probe], probe_dir: str | Path | None,
                champion_answers: Mapping[str, str], base_answers: Mapping[str, str] | None = None) -> FinalScores:
    """Scores of the final candidate `adapter` (see the module doc). `batch` entries' images
    are relative to `batch_image_root`, `prior` ones to `prior_image_root`; `prior` is the
    champion ledger in order (oldest first)."""
    from odedit import evaluate
    from odedit.lifecycle.batch import probe_answers
    from odedit.models.adapter import Sample

    out = FinalScores()
    later_all = list(prior) + [item.entry for item in batch]
    images = [_entry_image(e, prior_image_root) for e in prior]
    # every earlier edit's own probe, the forwards shared (as answers_with, one at a time)
    rels = evaluate.probe_logits_many(adapter, [[Sample(e.request["src"], e.target, img)]
                                                for e, img in zip(prior, images)],
                                      use=lambda _, pl: evaluate.accuracy_of(pl))
    for i, e in enumerate(prior):
        img, rel = images[i], rels[i]
        # superseded once, superseded for good: a later edit replaced that fact on purpose, so
        # what its prompt answers now is that later edit's business, not a lost edit
        superseded_by = (e.scores or {}).get("superseded_by") or "earlier batch" if e.status == "superseded" else None
        if superseded_by is None and (rel is None or rel < HOLDS):
            for later in later_all[i + 1:]:
                if same_thing(e, later) and later.target != e.target:
                    acc = answers_with(adapter, e.request["src"], img, later.target)
                    if acc is not None and acc >= HOLDS:
                        superseded_by = later.request_id
        status = status_of(rel, superseded_by is not None, HOLDS)
        out.prior[e.request_hash] = {"request_id": e.request_id, "reliability": rel, "status": status,
                                     "superseded_by": superseded_by}

    live = [item.entry for item in batch] + [e for e in prior if out.prior[e.request_hash]["status"] != "superseded"]
    exempt = {"t_loc": 0, "m_loc": 0}
    flags_of = {item.entry.request_id: intended_changes(item, live) for item in batch}
    scored = evaluate.scores(adapter, {item.entry.request_id: (item.heldout, item.before) for item in batch},
                             exclude=flags_of)
    for item in batch:
        flags = flags_of[item.entry.request_id]
        s = scored[item.entry.request_id].to_dict()
        s["intended_locality_changes"] = {k: sum(v) for k, v in flags.items()}
        for k, v in flags.items():
            exempt[k] += sum(v)
        s["status"] = status_of(s["reliability"], superseded=False, threshold=HOLDS)
        out.batch[item.entry.request_id] = s
    out.candidate_answers = probe_answers(adapter, probes, probe_dir)
    out.regression = regression_check(list(probes), champion_answers, out.candidate_answers, *edited_facts(live))
    if base_answers is not None:
        out.base_regression = regression_check(list(probes), base_answers, out.candidate_answers, *edited_facts(live))

    m = out.metrics
    m["batch_retention"] = _mean(s["reliability"] for s in out.batch.values())
    m["prior_retention"] = _mean(p["reliability"] for p in out.prior.values() if p["status"] != "superseded")
    for name in SCORES:  # locality here: protocol "answer"; EasyEdit's protocol tagged below
        m[f"final.{name}"] = _mean(s.get(name) for s in out.batch.values())
    for name in ("t_locality", "m_locality"):
        m[f"final.{name}/answer"] = m[f"final.{name}"]
        m[f"final.{name}/easyedit"] = _mean(s.get(f"{name}_easyedit") for s in out.batch.values())
    m["final.t_locality.intended_changes"] = float(exempt["t_loc"])
    m["final.m_locality.intended_changes"] = float(exempt["m_loc"])
    m["regression.changed_fraction"] = out.regression["changed_fraction"]
    if out.base_regression:
        m["regression_base.changed_fraction"] = out.base_regression["changed_fraction"]
    for st in ("holds", "lost", "superseded"):
        m[f"prior.{st}"] = float(sum(1 for p in out.prior.values() if p["status"] == st))
        m[f"batch.{st}"] = float(sum(1 for s in out.batch.values() if s["status"] == st))
    return out
