"""Stress splits: held-out probes hard enough to separate editors (issue "Measurement", item 5).

The request's own held-out probes (`rephrase`, `image_rephrase`, `loc`, `m_loc`) are drawn
from the same distribution as the edit's training environments, so every editor scores 96-98
on them. These splits are built from the world the embedded model was trained on (world
requests only), never enter any training environment, and are scored on the model after the
edit (single) or after the T-th edit (sequential):

generality (EasyEdit token accuracy of the NEW target, teacher forced):
  g_heavy_aug      the edit image under heavy label-preserving transforms (crop to 60-80 %,
                   +-30 deg rotation, brightness/contrast 0.6-1.4), the edit prompt
  g_style          the edit prompt on the opposite ground style (the light style no edit or
                   training image has), edit view and the held-out-style views
  g_phrasings      every held-out phrasing of the edited attribute, on the edit image
  portability      text only: the edited attribute asked about the subject BY NAME, every
                   held-out text phrasing (does an edit made through an image reach text?)
  g_heavy_aug@recognised, g_style@recognised: the same, only probes on which the UNEDITED
                   model gives the old answer (its token accuracy of `pred` is 1): an image it
                   does not recognise cannot show whether the edit generalises

locality (answer-position top-1 agreement with the unedited model, odedit's "answer" variant):
  l_same_subject   the edit image asked about the subject's OTHER attributes
  l_lookalike      the edit prompt, word for word, on each look-alike's image (a training view)
  l_nuisance_twin  the edit prompt on each look-alike drawn with the edit image's nuisances
                   (same view: pose, position, ground)
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from odedit import evaluate
from odedit.environments import augment_image, load_image
from odedit.metrics import locality_agreement, token_accuracy
from odedit.models.adapter import MLLMAdapter, Sample
from schemas.request import EditRequest

GEN_SPLITS = ("g_heavy_aug", "g_style", "g_phrasings", "portability")
RECOGNISED = ("g_heavy_aug", "g_style")
LOC_SPLITS = ("l_same_subject", "l_lookalike", "l_nuisance_twin")
SPLITS = GEN_SPLITS + tuple(f"{s}@recognised" for s in RECOGNISED) + LOC_SPLITS
PROTOCOL = {**{s: "easyedit token accuracy of the new target" for s in GEN_SPLITS},
            **{f"{s}@recognised": "easyedit token accuracy, probes the unedited model answers with the old fact"
               for s in RECOGNISED},
            **{s: "answer-position top-1 agreement with the unedited model (odedit answer variant)" for s in LOC_SPLITS}}
_VIEW = re.compile(r"_v(\d+)_([a-z]+)\.png$")


def heavy_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """A heavier label-preserving transform than the SE environments' `augment_image`."""
    return augment_image(image, rng, crop=(0.6, 0.8), degrees=30.0, jitter=0.4)


@dataclass
class StressProbes:
    """One request's stress probes and the unedited model's view of them."""

    gen: dict[str, list[Sample]]  # split -> samples labelled with the new target
    recognised: dict[str, list[bool]]  # split -> per probe: the unedited model gives the old answer
    loc: dict[str, list[Sample]]  # split -> samples labelled with the unedited model's answer
    pre: dict[str, evaluate.ProbeLogits]  # locality split -> the unedited model's logits


def build(world, adapter: MLLMAdapter, req: EditRequest, image_root: str | Path, seed: int = 0) -> StressProbes | None:
    """Stress probes of one world request, scored on the UNEDITED `adapter` for baselines.
    None when the request is not a world request (unknown subject or prompt)."""
    from odedit.models.world import HELDOUT_STYLE, IMAGE_KINDS, TEXT_KINDS

    ent = world.by_name.get(req.subject or "")
    kind = world.kind_of(req.src)
    m = _VIEW.search(Path(req.image).name)
    if ent is None or kind is None or m is None:
        return None
    view, style = int(m.group(1)), m.group(2)
    rng = random.Random(f"stress:{seed}:{req.id}")
    np_rng = np.random.default_rng([seed, zlib.crc32(req.id.encode())])
    image = load_image(req.image, image_root)
    gen = {
        "g_heavy_aug": [Sample(req.src, req.alt, heavy_augment(image, rng)) for _ in range(4)],
        "g_style": [Sample(req.src, req.alt, world.render(ent, v, HELDOUT_STYLE))
                    for v in [view] + list(world.heldout_style_views)[:3]],
        "g_phrasings": [Sample(ph.prompt(), req.alt, image) for ph in world.phrasings(kind, True, heldout=True)],
        "portability": ([Sample(ph.prompt(ent.name), req.alt) for ph in world.phrasings(kind, False, heldout=True)]
                        if kind in TEXT_KINDS else []),
    }
    recognised = {}
    for split in RECOGNISED:
        old = [Sample(s.prompt, req.pred, s.image) for s in gen[split]]
        pl = evaluate.probe_logits(adapter, old)
        recognised[split] = [] if pl is None else (token_accuracy(pl.logits, pl.labels) >= 1.0).tolist()
    looks = world.lookalikes(ent)
    loc_samples = {
        "l_same_subject": [(world.question(ent, k, True, False, np_rng), image) for k in IMAGE_KINDS if k != kind],
        "l_lookalike": [(req.src, world.render(o, int(np_rng.choice(world.train_views)))) for o in looks],
        "l_nuisance_twin": [(req.src, world.render(o, view, style)) for o in looks],
    }
    loc, pre = {}, {}
    for split, pairs in loc_samples.items():
        # label = the unedited model's own greedy answer (what must not change)
        labelled = [Sample(q, adapter.answer(q, im), im) for q, im in pairs]
        loc[split] = [s for s in labelled if s.target.strip()]
        if loc[split]:
            pre[split] = evaluate.probe_logits(adapter, loc[split])
    return StressProbes(gen, recognised, loc, pre)


@torch.no_grad()
def score(adapter: MLLMAdapter, probes: StressProbes) -> dict[str, float | None]:
    """Split -> score of the model as it is now (after the edit)."""
    out: dict[str, float | None] = {}
    for split, samples in probes.gen.items():
        pl = evaluate.probe_logits(adapter, samples)
        acc = [] if pl is None else token_accuracy(pl.logits, pl.labels).tolist()
        out[split] = sum(acc) / len(acc) if acc else None
        if split in probes.recognised:
            kept = [a for a, r in zip(acc, probes.recognised[split]) if r]
            out[f"{split}@recognised"] = sum(kept) / len(kept) if kept else None
    for split, samples in probes.loc.items():
        if not samples:
            out[split] = None
            continue
        pre = probes.pre[split]
        post = evaluate.probe_logits(adapter, samples)
        agree = locality_agreement(pre.logits, post.logits, pre.labels, 1).tolist()
        out[split] = sum(agree) / len(agree)
    return out


def mean_scores(per_edit: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean over edits of each split (edits without the split left out)."""
    out = {}
    for split in SPLITS:
        vals = [d[split] for d in per_edit if d.get(split) is not None]
        out[split] = sum(vals) / len(vals) if vals else None
    return out
