"""Where ODEdit's OUT (locality) training probes come from.

For the embedded model the seeded world it was pretrained on supplies unrelated facts; for any
other model, the batch's OTHER edit prompts (never the request's own, nor those of requests
about the same subject) with the model's own current answers are used. Neither source is ever
a request's held-out probe (`odedit.environments` filters those by text and image content)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from odedit.models.adapter import MLLMAdapter, Sample
from schemas.request import EditRequest

POOL_SIZE = 64


def world_of(model_dir: str | Path):
    """The World a model directory was pretrained on (from its train_report.json), or None."""
    report = Path(model_dir) / "train_report.json"
    if not report.is_file():
        return None
    from odedit.models.world import World

    data = json.loads(report.read_text())
    seed = data.get("world", {}).get("seed", data.get("seed", 0))
    return World(seed=seed)


def locality_pool_for(
    adapter: MLLMAdapter, model_ref: str | Path, requests: Sequence[EditRequest],
    image_root: str | Path | None, seed: int = 0, answers: Sequence[Sample] | None = None,
) -> Callable[[EditRequest], Sequence[Sample]] | list[Sample]:
    world = world_of(model_ref) if Path(str(model_ref)).is_dir() else None
    if world is not None:
        return lambda req: world.locality_pool(POOL_SIZE, req.subject or "", seed=seed)
    from odedit.editing import subject_of
    from odedit.environments import request_hash

    pool = [(request_hash(req), subject_of(req), s)
            for req, s in zip(requests, answers or current_answers(adapter, requests, image_root)) if s is not None]

    def for_request(req: EditRequest) -> list[Sample]:
        """The batch's probes minus this request's own and those about its subject."""
        own, subj = request_hash(req), subject_of(req)
        return [s for h, sub, s in pool if h != own and not (subj and sub and sub.lower() == subj.lower())]

    return for_request


def world_preservation(world, views_per_kind: int = 4, phrasings_per_kind: int = 4, seed: int = 0,
                       soft: bool = False):
    """Knowledge to preserve for a world model, with subjects: every entity x every image kind
    on `views_per_kind` training views (one distinct training phrasing a view) and every text
    kind in `phrasings_per_kind` distinct training phrasings (what the model was pretrained to
    know). Held-out views, the held-out style and held-out phrasings are never in it. `soft`
    marks every item for the soft set (`nullspace.KeyBank`)."""
    import numpy as np

    from odedit.editing import Kept
    from odedit.models.world import IMAGE_KINDS, TEXT_KINDS

    rng = np.random.default_rng([world.seed, 29, seed])
    n_views = min(views_per_kind, len(world.train_views))
    out = []
    for ent in world.entities:
        for kind in IMAGE_KINDS:
            phr = world.phrasings(kind, True)
            picks = rng.choice(len(phr), size=min(n_views, len(phr)), replace=False)
            for v, j in zip(rng.choice(world.train_views, size=n_views, replace=False), picks):
                out.append(Kept(Sample(phr[int(j)].prompt(), ent.answer(kind), world.render(ent, int(v))), ent.name,
                                soft=soft, stable=True))
        for kind in TEXT_KINDS:
            phr = world.phrasings(kind, False)
            for j in rng.choice(len(phr), size=min(phrasings_per_kind, len(phr)), replace=False):
                out.append(Kept(Sample(phr[int(j)].prompt(ent.name), ent.answer(kind)), ent.name, soft=soft,
                                stable=True))
    return out


def preservation_for(adapter: MLLMAdapter, model_ref: str | Path, requests: Sequence[EditRequest],
                     image_root: str | Path | None, seed: int = 0, answers: Sequence[Sample] | None = None,
                     views: int = 4, phrasings: int = 4, soft_views: int = 0, soft_phrasings: int = 0) -> list:
    """What the null-space constraint protects: the world's knowledge for a world model, else
    the batch's own prompts with the model's current answers (each tagged with its subject).
    World models also get the soft set (`soft_views` x `soft_phrasings`, other draws) when asked.
    INFERRED/PRODUCT: for a real checkpoint a larger preservation set (e.g. the fixed regression
    probes or a sample of the training distribution) protects more."""
    world = world_of(model_ref) if Path(str(model_ref)).is_dir() else None
    if world is not None:
        hard = world_preservation(world, views, phrasings, seed=seed)
        if soft_views or soft_phrasings:
            hard += world_preservation(world, soft_views, soft_phrasings, seed=seed + 1, soft=True)
        return hard
    from odedit.editing import Kept, subject_of

    return [Kept(s, subject_of(req))
            for req, s in zip(requests, answers or current_answers(adapter, requests, image_root)) if s is not None]


def preservation_of(adapter: MLLMAdapter, model_ref: str | Path, requests: Sequence[EditRequest],
                    image_root: str | Path | None, config, answers: Sequence[Sample] | None = None) -> list:
    """`preservation_for` with the sizes an `EditConfig` asks for (hard and soft sets)."""
    b = config.base
    return preservation_for(adapter, model_ref, requests, image_root, seed=config.seed, answers=answers,
                            views=b.preserve_views, phrasings=b.preserve_phrasings,
                            soft_views=b.soft_views, soft_phrasings=b.soft_phrasings)


def current_answers(adapter: MLLMAdapter, requests: Sequence[EditRequest],
                    image_root: str | Path | None) -> list[Sample | None]:
    """Each request's own prompt + image with the model's current (greedy) answer: what the OUT
    pool and the preservation set of a non-world model are made of (compute once, pass to both).
    The answer is taken exactly as the edit takes its `answer_before` (same call, same length):
    the edit of this request leaves out the fact (subject, that answer), so the two must match,
    or the edit's own prompt stays preserved against it. A request the model gives no answer
    (nothing to preserve), or cannot answer (unreadable image, a model-level error), is None here
    and left out of both; its own edit records any error, the rest of the batch goes on."""
    from odedit.environments import load_image

    out: list[Sample | None] = []
    for req in requests:
        try:
            image = load_image(req.image, image_root)
            answer = adapter.answer(req.src, image)
            out.append(Sample(req.src, answer, image) if answer else None)
        except Exception:
            out.append(None)
    return out
