"""Edit-quality metrics: pure torch functions over logits and labels, no model loading.

It owns the five MMEdit numbers (Reliability, T-/M-Generality, T-/M-Locality), retention for
sequential editing, and their per-edit record (`EditScores`) and mean over edits (`aggregate`).

Pinned EasyEdit definitions (zjunlp/EasyEdit, `compute_multimodal_edit_quality` and the locality
lines of `MultimodalEditor.edit`), re-implemented here:

* accuracy (Reliability, T-Generality, M-Generality): shift so that position t scores token t+1
  (`logits[:, :-1]` against `labels[:, 1:]`), keep the positions whose label is not -100, and
  take correct argmax tokens / kept tokens. EasyEdit evaluates one example per batch; we return
  one number per example, so batching never changes it.
* locality (T-Locality k=1, M-Locality k=10): element-wise equality of
  `topk(softmax(logits), k).indices` before and after the edit, averaged over all
  (position, rank) slots. EasyEdit versions differ in which positions are compared; we pin the
  variant "answer positions of the probe under teacher forcing with its own ground-truth answer":
  the same shifted label mask as accuracy, applied to the probe (loc / m_loc) encoded with its
  own answer (loc_ans / m_loc_a).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch

IGNORE_INDEX = -100


def _shifted(logits: torch.Tensor, labels: torch.Tensor):
    """(logits predicting t+1, their labels, mask of target positions); checks shapes."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"need logits [B, T, V] and labels [B, T]; got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    logits, labels = logits[:, :-1], labels[:, 1:].to(logits.device)
    mask = labels != IGNORE_INDEX
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"examples {empty} have no target tokens (all labels are -100)")
    return logits, labels, mask


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example teacher-forced token accuracy over the target tokens -> float [B]."""
    logits, labels, mask = _shifted(logits, labels)
    correct = (logits.argmax(dim=-1) == labels) & mask
    return correct.sum(dim=1).float() / mask.sum(dim=1).float()


def locality_agreement(pre_logits: torch.Tensor, post_logits: torch.Tensor,
                       labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-example fraction of (answer position, rank) slots whose top-k token is unchanged.

    Slot (t, r) agrees when the r-th most probable token at position t is the same token before
    and after the edit, so a swap of ranks r and r+1 costs two slots. k is clamped to the vocab.
    """
    if pre_logits.shape != post_logits.shape:
        raise ValueError(f"pre/post logits differ in shape: {tuple(pre_logits.shape)} vs "
                         f"{tuple(post_logits.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pre, _, mask = _shifted(pre_logits, labels)
    post, _, _ = _shifted(post_logits, labels)
    k = min(k, pre.shape[-1])

    def top(x: torch.Tensor) -> torch.Tensor:  # [N, k] over kept positions only
        return torch.topk(torch.softmax(x[mask].float(), dim=-1), k, dim=-1).indices

    same = (top(pre) == top(post.to(pre.device))).float().sum(dim=-1)  # [N] agreeing ranks
    example = mask.nonzero()[:, 0]  # example index of every kept position, in `x[mask]` order
    per_example = torch.zeros(mask.shape[0], device=same.device).index_add_(0, example, same)
    return per_example / (mask.sum(dim=1).float() * k)


def retention(accs_after_all: Sequence[float]) -> float:
    """Sequential editing: mean reliability of every edit, each measured after the LAST edit.

    `accs_after_all[i]` is `token_accuracy` of edit i's own prompt/target after all edits of the
    sequence were applied (not right after edit i), so forgetting of earlier edits lowers it.
    """
    if len(accs_after_all) == 0:
        raise ValueError("retention() needs at least one edit")
    return float(sum(accs_after_all) / len(accs_after_all))


@dataclass(frozen=True)
class EditScores:
    """The five MMEdit scores of one edit; None where the request has no such probe."""

    reliability: float | None = None
    t_generality: float | None = None
    m_generality: float | None = None
    t_locality: float | None = None
    m_locality: float | None = None

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"{f.name} must be in [0, 1] or None, got {v}")

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def aggregate(scores: Sequence[EditScores]) -> dict[str, float | None]:
    """Mean of each score over the edits that have it; None where no edit has it."""
    out: dict[str, float | None] = {}
    for f in fields(EditScores):
        vals = [getattr(s, f.name) for s in scores if getattr(s, f.name) is not None]
        out[f.name] = math.fsum(vals) / len(vals) if vals else None
    return out
