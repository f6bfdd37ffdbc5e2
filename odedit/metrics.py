"""Edit-quality metrics: pure torch functions over logits and labels, no model loading.

It owns the five MMEdit numbers (Reliability, T-/M-Generality, T-/M-Locality), retention for
sequential editing, and their per-edit record (`EditScores`) and mean over edits (`aggregate`).

Pinned EasyEdit definitions (zjunlp/EasyEdit, `compute_multimodal_edit_quality` and the locality
lines of `MultimodalEditor.edit`), re-implemented here:

* accuracy (Reliability, T-Generality, M-Generality): shift so that position t scores token t+1
  (`logits[:, :-1]` against `labels[:, 1:]`), keep the positions whose label is not -100, and
  take correct argmax tokens / kept tokens. EasyEdit evaluates one example per batch; we return
  one number per example, so batching never changes it.
* exact match (option, `exact_match`): 1 when every target token is the argmax, else 0
  (EasyEdit's `exact_match` flag of `compute_multimodal_edit_quality`, off by default).

Two NAMED locality protocols (T-Locality k=1, M-Locality k=10); their numbers are NOT
comparable with each other (on the same edits M-Loc@easyedit ~54 % where M-Loc@answer ~94 %):

* ``easyedit`` (`locality_easyedit` / `topk_token_match`): EasyEdit's own protocol,
  `easyeditor/editors/multimodal_editor.py` calling `topk_token_match` of
  `easyeditor/util/vl_utils.py`: keep the LAST L positions of pre and post logits
  (L = the shorter length), top-k over the vocabulary on raw logits, compare the two index
  tensors element-wise in order (flattened), mean over ALL those (position, rank) slots - the
  WHOLE sequence, image and prompt positions included. EasyEdit runs batch size 1; we strip
  each row's padding with its attention mask first, so batching never changes a value.
* ``answer`` (`locality_answer_positions`, alias `locality_agreement`): the same ordered top-k
  comparison restricted to the answer positions of the probe under teacher forcing with its
  own ground-truth answer (the shifted label mask of accuracy; LiveEdit-style). The lifecycle
  gate's thresholds were set on this variant (configs/gate.yaml `locality_protocol`).

Every score carries a `MetricMeta` (protocol, scorer, comparable group); tagged names are
``<score>@<protocol>`` (e.g. ``t_locality@easyedit``, ``t_locality@answer``) in JSON reports and
``<score>/<protocol>`` in MLflow (which rejects '@').
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
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


def exact_match(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example exact match: 1.0 when every target token is the argmax, else 0.0 -> [B]."""
    logits, labels, mask = _shifted(logits, labels)
    wrong = (logits.argmax(dim=-1) != labels) & mask
    return (~wrong.any(dim=1)).float()


def topk_token_match(pre_logits: torch.Tensor, post_logits: torch.Tensor, k: int) -> torch.Tensor:
    """EasyEdit's locality of ONE batch (zjunlp/EasyEdit `easyeditor/util/vl_utils.py`,
    `topk_token_match`, called from `easyeditor/editors/multimodal_editor.py`): the last
    L = min(T_pre, T_post) positions of both [B, T, V] tensors, top-k indices over the vocabulary
    of raw float32 logits, element-wise equality of the flattened index tensors, mean over all
    (row, position, rank) slots -> scalar. Padding is NOT removed here (EasyEdit has B = 1)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pre, post = torch.as_tensor(pre_logits).float(), torch.as_tensor(post_logits).float()
    if pre.dim() != 3 or post.dim() != 3 or pre.shape[0] != post.shape[0]:
        raise ValueError(f"need [B, T, V] logits with one B; got {tuple(pre.shape)} and {tuple(post.shape)}")
    L = min(pre.shape[1], post.shape[1])
    pre, post = pre[:, pre.shape[1] - L:], post[:, post.shape[1] - L:]
    k = min(k, pre.shape[-1], post.shape[-1])
    a = torch.topk(pre, k, dim=-1).indices.reshape(-1)
    b = torch.topk(post.to(pre.device), k, dim=-1).indices.reshape(-1)
    return (a == b).float().mean()


def locality_easyedit(pre_logits: torch.Tensor, post_logits: torch.Tensor, k: int,
                      pre_mask: torch.Tensor | None = None,
                      post_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example EasyEdit locality (protocol ``easyedit``) of padded batches -> float [B].

    Row i keeps its real positions (attention mask 1; all when no mask or when the mask does
    not cover the logits' length), then `topk_token_match` on that single row - exactly what
    EasyEdit computes with batch size 1."""
    if pre_logits.shape[0] != post_logits.shape[0]:
        raise ValueError("pre/post logits differ in batch size")

    def row(x, m, i):
        if m is None or m.shape[-1] != x.shape[1]:
            return x[i:i + 1]
        return x[i:i + 1][:, m[i].bool().to(x.device)]

    return torch.stack([topk_token_match(row(pre_logits, pre_mask, i), row(post_logits, post_mask, i), k)
                        for i in range(pre_logits.shape[0])])


def locality_answer_positions(pre_logits: torch.Tensor, post_logits: torch.Tensor,
                       labels: torch.Tensor, k: int) -> torch.Tensor:
    """Protocol ``answer``: per-example fraction of (answer position, rank) slots whose top-k
    token is unchanged (softmax then top-k, which orders like raw logits).

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


locality_agreement = locality_answer_positions  # the historical name; protocol ``answer``

PROTOCOL_EASYEDIT = "easyedit"
PROTOCOL_ANSWER = "answer"
LOCALITY_PROTOCOLS = (PROTOCOL_ANSWER, PROTOCOL_EASYEDIT)
T_LOC_K = 1  # EasyEdit: top-1 agreement for text locality
M_LOC_K = 10  # EasyEdit: ordered top-10 agreement for multimodal locality


@dataclass(frozen=True)
class MetricMeta:
    """What a number means: only numbers with the same `comparable_group` may be compared."""

    protocol: str  # "easyedit" | "answer"
    scorer: str  # "token_acc" | "exact_match" | "top1_match" | "top10_ordered_match"
    comparable_group: str

    def to_dict(self) -> dict:
        return asdict(self)


def _meta(protocol: str, scorer: str) -> MetricMeta:
    return MetricMeta(protocol, scorer, f"{protocol}/{scorer}")


def metric_meta(rel_gen_scorer: str = "token_acc") -> dict[str, MetricMeta]:
    """Score field of `EditScores` -> its MetricMeta."""
    acc = _meta(PROTOCOL_EASYEDIT, rel_gen_scorer)
    return {
        "reliability": acc, "t_generality": acc, "m_generality": acc,
        "t_locality": _meta(PROTOCOL_ANSWER, "top1_match"),
        "m_locality": _meta(PROTOCOL_ANSWER, "top10_ordered_match"),
        "t_locality_easyedit": _meta(PROTOCOL_EASYEDIT, "top1_match"),
        "m_locality_easyedit": _meta(PROTOCOL_EASYEDIT, "top10_ordered_match"),
    }


def tagged_name(field_name: str, rel_gen_scorer: str = "token_acc", sep: str = "@") -> str:
    """`t_locality_easyedit` -> `t_locality@easyedit`; `t_locality` -> `t_locality@answer`;
    reliability -> `reliability@easyedit` (`reliability@easyedit-em` with exact match)."""
    meta = metric_meta(rel_gen_scorer)[field_name]
    base = field_name.removesuffix("_easyedit")
    proto = meta.protocol + ("-em" if meta.scorer == "exact_match" else "")
    return f"{base}{sep}{proto}"


def tagged(values: dict, rel_gen_scorer: str = "token_acc", sep: str = "@",
           prefix: str = "") -> dict[str, float | None]:
    """Plain score names (as in `EditScores.to_dict` / `aggregate`) -> protocol-tagged names."""
    known = metric_meta(rel_gen_scorer)
    return {prefix + tagged_name(k, rel_gen_scorer, sep): v for k, v in values.items() if k in known}


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
    """The five MMEdit scores of one edit; None where the request has no such probe.

    `t_locality` / `m_locality` are protocol ``answer``; `*_easyedit` the same probes under
    protocol ``easyedit``; Rel/Gen use `rel_gen_scorer` ("token_acc" or "exact_match")."""

    reliability: float | None = None
    t_generality: float | None = None
    m_generality: float | None = None
    t_locality: float | None = None
    m_locality: float | None = None
    t_locality_easyedit: float | None = None
    m_locality_easyedit: float | None = None
    rel_gen_scorer: str = "token_acc"

    def __post_init__(self):
        for name in SCORE_FIELDS:
            v = getattr(self, name)
            if v is not None and not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"{name} must be in [0, 1] or None, got {v}")
        if self.rel_gen_scorer not in ("token_acc", "exact_match"):
            raise ValueError(f"rel_gen_scorer must be token_acc or exact_match, got {self.rel_gen_scorer!r}")

    def to_dict(self) -> dict:
        """Plain scores, their protocol-tagged copies and `metric_meta` per score."""
        d = {name: getattr(self, name) for name in SCORE_FIELDS}
        return {**d, "tagged": tagged(d, self.rel_gen_scorer),
                "metric_meta": {k: m.to_dict() for k, m in metric_meta(self.rel_gen_scorer).items()}}


SCORE_FIELDS = ("reliability", "t_generality", "m_generality", "t_locality", "m_locality",
                "t_locality_easyedit", "m_locality_easyedit")


def aggregate(scores: Sequence[EditScores]) -> dict[str, float | None]:
    """Mean of each score over the edits that have it; None where no edit has it."""
    out: dict[str, float | None] = {}
    for name in SCORE_FIELDS:
        vals = [getattr(s, name) for s in scores if getattr(s, name) is not None]
        out[name] = math.fsum(vals) / len(vals) if vals else None
    return out
