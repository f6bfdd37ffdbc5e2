"""Scoring an edit on its held-out probes with the definitions of `odedit.metrics`.

Pre-edit logits of the locality probes are kept so post-edit agreement can be measured;
every score is computed under no_grad in batches per probe kind. Locality is scored under BOTH
named protocols: ``answer`` (`t_locality`, `m_locality`) and ``easyedit`` (whole sequence,
last-L aligned: `t_locality_easyedit`, `m_locality_easyedit`). Rel/Gen use EasyEdit's token
accuracy, or exact match with `rel_gen_scorer="exact_match"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from odedit.environments import HeldOut
from odedit.metrics import (M_LOC_K, T_LOC_K, EditScores, exact_match, locality_answer_positions,
                            locality_easyedit, token_accuracy)
from odedit.models.adapter import Encoded, MLLMAdapter, Sample

SCORERS = {"token_acc": token_accuracy, "exact_match": exact_match}
HELD_KINDS = ("reliability", "t_gen", "m_gen", "t_loc", "m_loc")  # the HeldOut probe lists


@dataclass
class ProbeLogits:
    logits: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor | None = None  # attention mask (real positions), for protocol easyedit


@torch.no_grad()
def probe_logits(adapter: MLLMAdapter, samples: list[Sample], enc: Encoded | None = None) -> ProbeLogits | None:
    """Logits of `samples` (their encoding `enc` when already made: the same probes are scored
    before and after an edit, and tokenising images costs more than the tiny forward)."""
    if not samples:
        return None
    enc = enc or adapter.encode(samples)
    mask = enc.inputs.get("attention_mask") if isinstance(enc.inputs, dict) else None
    return ProbeLogits(adapter.logits(enc).cpu(), enc.labels.cpu(), None if mask is None else mask.cpu())


def accuracy(adapter: MLLMAdapter, samples: list[Sample], scorer: str = "token_acc",
             enc: Encoded | None = None) -> float | None:
    pl = probe_logits(adapter, samples, enc)
    return None if pl is None else float(SCORERS[scorer](pl.logits, pl.labels).mean())


@dataclass
class Baseline:
    """What the model did before the edit: scores and the locality probes' logits."""

    scores: EditScores
    t_loc: ProbeLogits | None
    m_loc: ProbeLogits | None
    encoded: dict[str, Encoded] = field(default_factory=dict)  # each probe kind's encoding, for `score`


def baseline(adapter: MLLMAdapter, held: HeldOut, rel_gen_scorer: str = "token_acc",
             keep_encoded: bool = False) -> Baseline:
    """The pre-edit scores and locality logits. `keep_encoded`: the Baseline keeps the probes'
    encodings for `score` to reuse (the same probes, scored right after one edit); off where
    baselines of a whole batch are held at once (image encodings on the device add up)."""
    enc = {k: adapter.encode(getattr(held, k)) for k in HELD_KINDS if getattr(held, k)}
    scores = EditScores(
        reliability=accuracy(adapter, held.reliability, rel_gen_scorer, enc.get("reliability")),
        t_generality=accuracy(adapter, held.t_gen, rel_gen_scorer, enc.get("t_gen")),
        m_generality=accuracy(adapter, held.m_gen, rel_gen_scorer, enc.get("m_gen")),
        t_locality=1.0 if held.t_loc else None,
        m_locality=1.0 if held.m_loc else None,
        t_locality_easyedit=1.0 if held.t_loc else None,
        m_locality_easyedit=1.0 if held.m_loc else None,
        rel_gen_scorer=rel_gen_scorer,
    )
    return Baseline(scores, probe_logits(adapter, held.t_loc, enc.get("t_loc")),
                    probe_logits(adapter, held.m_loc, enc.get("m_loc")), enc if keep_encoded else {})


def reliability_only(adapter: MLLMAdapter, held: HeldOut, rel_gen_scorer: str = "token_acc") -> EditScores:
    """Just the reliability of an edit (its own probe), the other scores None."""
    return EditScores(reliability=accuracy(adapter, held.reliability, rel_gen_scorer), rel_gen_scorer=rel_gen_scorer)


def _agreement(adapter: MLLMAdapter, samples: list[Sample], pre: ProbeLogits | None,
               k: int, exclude: Sequence[bool] | None = None,
               enc: Encoded | None = None) -> tuple[float | None, float | None]:
    """(protocol answer, protocol easyedit) locality of one probe kind, flagged probes left out."""
    if pre is None:
        return None, None
    post = probe_logits(adapter, samples, enc)
    answer = locality_answer_positions(pre.logits, post.logits, pre.labels, k)
    easy = locality_easyedit(pre.logits, post.logits, k, pre.mask, post.mask)
    if exclude is not None:
        keep = ~torch.tensor([bool(x) for x in exclude], dtype=torch.bool)
        if not bool(keep.any()):
            return None, None
        answer, easy = answer[keep], easy[keep]
    return float(answer.mean()), float(easy.mean())


def score(adapter: MLLMAdapter, held: HeldOut, before: Baseline, rel_gen_scorer: str | None = None,
          exclude: dict[str, Sequence[bool]] | None = None) -> EditScores:
    """The five held-out scores after an edit. `exclude` ("t_loc" / "m_loc" -> one flag a
    probe) leaves flagged locality probes out of the means (probes whose change was intended:
    `odedit.lifecycle.final.intended_changes`); all left out -> None."""
    scorer = rel_gen_scorer or before.scores.rel_gen_scorer
    exclude = exclude or {}
    enc = before.encoded
    t_ans, t_easy = _agreement(adapter, held.t_loc, before.t_loc, T_LOC_K, exclude.get("t_loc"), enc.get("t_loc"))
    m_ans, m_easy = _agreement(adapter, held.m_loc, before.m_loc, M_LOC_K, exclude.get("m_loc"), enc.get("m_loc"))
    return EditScores(
        reliability=accuracy(adapter, held.reliability, scorer, enc.get("reliability")),
        t_generality=accuracy(adapter, held.t_gen, scorer, enc.get("t_gen")),
        m_generality=accuracy(adapter, held.m_gen, scorer, enc.get("m_gen")),
        t_locality=t_ans, m_locality=m_ans,
        t_locality_easyedit=t_easy, m_locality_easyedit=m_easy,
        rel_gen_scorer=scorer,
    )
