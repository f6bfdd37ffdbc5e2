"""Scoring an edit on its held-out probes with the EasyEdit definitions of `odedit.metrics`.

Pre-edit logits of the locality probes are kept so post-edit agreement can be measured;
every score is computed under no_grad in batches per probe kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from odedit.environments import HeldOut
from odedit.metrics import EditScores, locality_agreement, token_accuracy
from odedit.models.adapter import MLLMAdapter, Sample

T_LOC_K = 1  # EasyEdit: top-1 agreement for text locality
M_LOC_K = 10  # EasyEdit: ordered top-10 agreement for multimodal locality


@dataclass
class ProbeLogits:
    logits: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def probe_logits(adapter: MLLMAdapter, samples: list[Sample]) -> ProbeLogits | None:
    if not samples:
        return None
    enc = adapter.encode(samples)
    return ProbeLogits(adapter.logits(enc).cpu(), enc.labels.cpu())


def accuracy(adapter: MLLMAdapter, samples: list[Sample]) -> float | None:
    pl = probe_logits(adapter, samples)
    return None if pl is None else float(token_accuracy(pl.logits, pl.labels).mean())


@dataclass
class Baseline:
    """What the model did before the edit: scores and the locality probes' logits."""

    scores: EditScores
    t_loc: ProbeLogits | None
    m_loc: ProbeLogits | None


def baseline(adapter: MLLMAdapter, held: HeldOut) -> Baseline:
    scores = EditScores(
        reliability=accuracy(adapter, held.reliability),
        t_generality=accuracy(adapter, held.t_gen),
        m_generality=accuracy(adapter, held.m_gen),
        t_locality=1.0 if held.t_loc else None,
        m_locality=1.0 if held.m_loc else None,
    )
    return Baseline(scores, probe_logits(adapter, held.t_loc), probe_logits(adapter, held.m_loc))


def _agreement(adapter: MLLMAdapter, samples: list[Sample], pre: ProbeLogits | None, k: int) -> float | None:
    if pre is None:
        return None
    post = probe_logits(adapter, samples)
    return float(locality_agreement(pre.logits, post.logits, pre.labels, k).mean())


def score(adapter: MLLMAdapter, held: HeldOut, before: Baseline) -> EditScores:
    return EditScores(
        reliability=accuracy(adapter, held.reliability),
        t_generality=accuracy(adapter, held.t_gen),
        m_generality=accuracy(adapter, held.m_gen),
        t_locality=_agreement(adapter, held.t_loc, before.t_loc, T_LOC_K),
        m_locality=_agreement(adapter, held.m_loc, before.m_loc, M_LOC_K),
    )
