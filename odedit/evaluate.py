"""Scoring an edit on its held-out probes with the definitions of `odedit.metrics`.

Pre-edit logits of the locality probes are kept so post-edit agreement can be measured;
every score is computed under no_grad in batches per probe kind. Locality is scored under BOTH
named protocols: ``answer`` (`t_locality`, `m_locality`) and ``easyedit`` (whole sequence,
last-L aligned: `t_locality_easyedit`, `m_locality_easyedit`). Rel/Gen use EasyEdit's token
accuracy, or exact match with `rel_gen_scorer="exact_match"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

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


def _trim(pl: ProbeLogits, rows: list[int]) -> ProbeLogits:
    """`rows` of a right-padded batch's logits, cut to the longest of them: exactly the shape the
    rows have when encoded on their own (padding to the longest), whatever else shared the batch."""
    labels = pl.labels[rows]
    mask = pl.mask[rows] if pl.mask is not None else None
    real = mask if mask is not None else (labels != -100)
    length = int(real.any(dim=0).nonzero().max()) + 1
    return ProbeLogits(pl.logits[rows][:, :length], labels[:, :length], None if mask is None else mask[:, :length])


@torch.no_grad()
def probe_logits_many(adapter: MLLMAdapter, sets: Sequence[list[Sample]], max_rows: int = 16,
                      use: Callable[[int, ProbeLogits], object] | None = None) -> list:
    """`probe_logits` of each list of samples, the forwards shared: lists are packed whole into
    batches of one modality of at most `max_rows` rows (a list larger than that is one batch), and
    each list's logits are cut back to its own length (`_trim`). Speed only: the values are those
    of each list on its own, up to float rounding of a different batch (right padding, causal).
    `use(i, logits)`: what is kept of list i's logits (default: the logits), taken as soon as its
    batch ran, so that a whole batch's logits (vocabulary-sized each) are never held at once."""
    out: list = [None] * len(sets)
    for has_image in (True, False):
        members = [i for i, ss in enumerate(sets) if ss and (ss[0].image is not None) == has_image]
        if any(any((x.image is not None) != has_image for x in sets[i]) for i in members):
            raise ValueError("a probe list mixes image and text-only samples")
        packs, cur = [], []
        for i in members:
            if cur and sum(len(sets[j]) for j in cur) + len(sets[i]) > max_rows:
                packs.append(cur)
                cur = []
            cur.append(i)
        if cur:
            packs.append(cur)
        for pack in packs:
            pl = probe_logits(adapter, [x for i in pack for x in sets[i]])
            start = 0
            for i in pack:
                got = _trim(pl, list(range(start, start + len(sets[i]))))
                out[i] = got if use is None else use(i, got)
                start += len(sets[i])
    return out


def accuracy(adapter: MLLMAdapter, samples: list[Sample], scorer: str = "token_acc",
             enc: Encoded | None = None) -> float | None:
    pl = probe_logits(adapter, samples, enc)
    return None if pl is None else accuracy_of(pl, scorer)


def accuracy_of(pl: ProbeLogits, scorer: str = "token_acc") -> float:
    """Mean Rel/Gen score of probe logits under `scorer` (token accuracy or exact match)."""
    return float(SCORERS[scorer](pl.logits, pl.labels).mean())


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
    got = {k: _measure(k, probe_logits(adapter, getattr(held, k), enc.get(k)), rel_gen_scorer, None, {})
           for k in HELD_KINDS}
    return Baseline(_scores(held, got, rel_gen_scorer, None), got["t_loc"], got["m_loc"], enc if keep_encoded else {})


def reliability_only(adapter: MLLMAdapter, held: HeldOut, rel_gen_scorer: str = "token_acc") -> EditScores:
    """Just the reliability of an edit (its own probe), the other scores None."""
    return EditScores(reliability=accuracy(adapter, held.reliability, rel_gen_scorer), rel_gen_scorer=rel_gen_scorer)


def _measured(adapter: MLLMAdapter, helds: Sequence[HeldOut], max_rows: int,
              use: Callable[[int, str, ProbeLogits], object]) -> list[dict[str, object]]:
    """Per held-out set, per probe kind, `use(set index, kind, logits)`, the forwards shared."""
    n = len(HELD_KINDS)
    flat = probe_logits_many(adapter, [getattr(h, kind) for h in helds for kind in HELD_KINDS], max_rows,
                             use=lambda i, pl: use(i // n, HELD_KINDS[i % n], pl))
    return [dict(zip(HELD_KINDS, flat[i * n:(i + 1) * n])) for i in range(len(helds))]


def baselines(adapter: MLLMAdapter, helds: Mapping[str, HeldOut], rel_gen_scorer: str = "token_acc",
              max_rows: int = 16) -> dict[str, Baseline]:
    """`baseline` of many held-out sets (key -> HeldOut), the forwards shared."""
    got = _measured(adapter, list(helds.values()), max_rows,
                    lambda i, kind, pl: _measure(kind, pl, rel_gen_scorer, None, {}))
    return {k: Baseline(_scores(h, m, rel_gen_scorer, None), m["t_loc"], m["m_loc"])
            for (k, h), m in zip(helds.items(), got)}


def scores(adapter: MLLMAdapter, items: Mapping[str, tuple[HeldOut, Baseline]],
           exclude: Mapping[str, dict[str, Sequence[bool]]] | None = None, max_rows: int = 16) -> dict[str, EditScores]:
    """`score` of many edits (key -> (HeldOut, Baseline)), the forwards shared."""
    keys = list(items)
    ex = [(exclude or {}).get(k) or {} for k in keys]
    befores = [items[k][1] for k in keys]
    got = _measured(adapter, [items[k][0] for k in keys], max_rows,
                    lambda i, kind, pl: _measure(kind, pl, befores[i].scores.rel_gen_scorer, befores[i], ex[i]))
    return {k: _scores(items[k][0], m, befores[i].scores.rel_gen_scorer, befores[i])
            for i, (k, m) in enumerate(zip(keys, got))}


def _measure(kind: str, pl: ProbeLogits | None, scorer: str, before: Baseline | None,
             exclude: Mapping[str, Sequence[bool]]):
    """What a score keeps of one probe kind's logits: reliability / generality their accuracy;
    locality, for a baseline (`before` None) the logits themselves, else the (protocol answer,
    protocol easyedit) agreement with the baseline's, flagged probes left out."""
    if pl is None:
        return None
    if kind in ("t_loc", "m_loc"):
        if before is None:
            return pl
        return _agreement_of(getattr(before, kind), pl, T_LOC_K if kind == "t_loc" else M_LOC_K, exclude.get(kind))
    return accuracy_of(pl, scorer)


def _scores(held: HeldOut, got: dict, scorer: str, before: Baseline | None) -> EditScores:
    """The five scores from each kind's `_measure`; `before` None: a baseline (locality 1)."""
    if before is None:
        t_ans = t_easy = 1.0 if held.t_loc else None
        m_ans = m_easy = 1.0 if held.m_loc else None
    else:
        t_ans, t_easy = got["t_loc"] or (None, None)
        m_ans, m_easy = got["m_loc"] or (None, None)
    return EditScores(reliability=got["reliability"], t_generality=got["t_gen"], m_generality=got["m_gen"],
                      t_locality=t_ans, m_locality=m_ans, t_locality_easyedit=t_easy, m_locality_easyedit=m_easy,
                      rel_gen_scorer=scorer)


def _agreement_of(pre: ProbeLogits | None, post: ProbeLogits, k: int,
                  exclude: Sequence[bool] | None) -> tuple[float | None, float | None]:
    """(protocol answer, protocol easyedit) locality from pre- and post-edit logits, flagged probes left out."""
    if pre is None:
        return None, None
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
    got = {k: _measure(k, probe_logits(adapter, getattr(held, k), before.encoded.get(k)), scorer, before, exclude or {})
           for k in HELD_KINDS}
    return _scores(held, got, scorer, before)
