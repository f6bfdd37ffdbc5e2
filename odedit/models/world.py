"""A seeded, procedurally generated multimodal knowledge world for the embedded model.

This module owns everything the embedded model knows and everything the demo edits are about:

  - the entities (body colour x stripe colour combinations, each with an invented one-word name and three
    invented facts: `home` -> a city, `food` -> a food, `maker` -> a maker), including
    look-alike entities (red/orange bodies, pink/purple and white/yellow stripes);
  - deterministic 32x32 renders of an entity (`render(entity, view, style)`), with training
    views, held-out views and one held-out visual style;
  - compositional question phrasings (prefix x predicate x object noun) with a train /
    held-out split, so held-out phrasings are unseen combinations of seen words;
  - the pretraining set, the held-out evaluation splits, demo edit requests
    (`schemas.EditRequest`) and locality pools for optimisation environments.

Prompts always look like `question: <words> ? answer:` and every answer is one word (one token
of the word-level tokenizer). Pure python + PIL + numpy: no torch here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from odedit.models.adapter import Sample

# ----------------------------------------------------------------------------- vocabularies
# An entity's visual identity is its body colour and the colour of its stripes: both are
# visible inside every 8x8 patch (patch means and pixel values), which a from-scratch patch-8
# ViT learns quickly. Blob outline, stripe orientation and phase, position, size, rotation,
# ground and noise vary from view to view (nuisances), so "other images of the same thing"
# genuinely differ. (Shapes, then fill textures, as identity proved unlearnable for the tiny
# ViT: 35% and chance level on held-out views.)
STRIPES = {
    "white": (235, 235, 235),
    "yellow": (240, 215, 40),
    "purple": (135, 60, 205),
    "cyan": (40, 215, 225),
    "pink": (250, 140, 195),
    "brown": (125, 75, 35),
}
PATTERNS = list(STRIPES)
BLOB_SHAPES = ["circle", "square", "hexagon", "diamond", "triangle"]
COLOURS = {
    "red": (210, 45, 45),
    "orange": (232, 132, 36),
    "green": (45, 170, 70),
    "blue": (45, 85, 220),
}
# Pairs that look alike (the hard negatives of locality).
LOOKALIKE_PATTERNS = [("pink", "purple"), ("white", "yellow")]
LOOKALIKE_COLOURS = [("red", "orange")]

NAMES = [
    "zorb", "blick", "quam", "fendo", "trilp", "mopsy", "gaxel", "voonk", "prindle", "skaw",
    "lumio", "drabbit", "yorp", "kelvo", "snib", "wuzzle", "tarnik", "plov", "gribble", "nubo",
    "jaxby", "oomph", "quibble", "razzle", "tibbit", "vexa", "wimble", "yazoo", "zindle", "frell",
]
ATTRIBUTE_VALUES = {
    "home": ["brindor", "calmere", "dunwick", "esterly", "faloon", "gorrin"],
    "food": ["plumcake", "sorrel", "mallow", "figroot", "nutloaf", "kelpie"],
    "maker": ["vantor", "kesswell", "orbix", "tellan", "mirrak", "quillo"],
}
FACT_ATTRIBUTES = tuple(ATTRIBUTE_VALUES)

# ----------------------------------------------------------------------------- phrasings
PREFIXES = ["", "tell me ,", "please ,", "hey ,", "quick question ,", "i wonder ,"]
IMAGE_OBJECTS = [
    "this object", "this thing", "this item", "the shown object", "the pictured thing",
    "the object in the image", "the thing in the picture",
]
TEXT_OBJECTS = ["the {n}", "{n}", "the thing called {n}", "the item named {n}", "the one known as {n}"]
SCENES = ["the image", "this picture", "the photo", "this scene", "the picture"]

PREDICATES = {
    "home": [
        "where does {o} live", "what is the home of {o}", "which city is home to {o}",
        "where is {o} from", "what town does {o} come from", "in which city does {o} reside",
    ],
    "food": [
        "what does {o} eat", "what is the food of {o}", "which food does {o} like",
        "what is the favourite food of {o}", "what meal does {o} prefer", "what is eaten by {o}",
    ],
    "maker": [
        "who made {o}", "who is the maker of {o}", "which company built {o}",
        "who built {o}", "what brand produced {o}", "who manufactures {o}",
    ],
    "pattern": [
        "what colour are the stripes of {o}", "what is the stripe colour of {o}",
        "which stripes does {o} have", "how is {o} striped", "what colour is the trim of {o}",
    ],
    "colour": [
        "what colour is {o}", "what is the colour of {o}", "which colour does {o} have",
        "what hue is {o}", "how is {o} coloured",
    ],
    "name": [
        "what is the name of {o}", "what is {o} called", "what do people call {o}",
        "which name does {o} have", "who is {o}",
    ],
    "caption": [
        "describe {o}", "caption {o}", "what is shown in {o}", "what do you see in {o}",
        "summarise {o}",
    ],
}
IMAGE_KINDS = ("home", "food", "maker", "pattern", "colour", "name", "caption")
TEXT_KINDS = ("home", "food", "maker", "pattern", "colour")

TRAIN_STYLES = ("dark", "grey")  # view v uses TRAIN_STYLES[v % 2]: the ground's brightness
HELDOUT_STYLE = "light"             # a light ground, never seen in training
STYLES = TRAIN_STYLES + (HELDOUT_STYLE,)
HELDOUT_FRACTION = 0.2

REQUESTERS = ["ana@catalogue.example", "bo@catalogue.example", "chen@qa.example", "dee@ops.example"]


def prompt_of(question: str) -> str:
    """The fixed prompt format: `question: <words> ? answer:` (whitespace normalised)."""
    return "question: " + " ".join(f"{question} ? answer:".split())


@dataclass(frozen=True)
class Entity:
    """One thing of the world: what it looks like, what it is called and its invented facts."""

    index: int
    pattern: str
    colour: str
    name: str
    facts: tuple[tuple[str, str], ...]  # ((attribute, value), ...) in FACT_ATTRIBUTES order

    def fact(self, attribute: str) -> str:
        return dict(self.facts)[attribute]

    def answer(self, kind: str) -> str:
        """The one-word answer to a question of `kind` about this entity."""
        if kind in FACT_ATTRIBUTES:
            return self.fact(kind)
        if kind == "pattern":
            return self.pattern
        if kind == "colour":
            return self.colour
        if kind in ("name", "caption"):
            return self.name
        raise KeyError(kind)


@dataclass(frozen=True)
class Phrasing:
    """A compositional question template: prefix x predicate x object noun."""

    kind: str
    prefix: str
    predicate: str
    obj: str

    def prompt(self, name: str | None = None) -> str:
        obj = self.obj.format(n=name) if name is not None else self.obj
        return prompt_of(f"{self.prefix} {self.predicate.format(o=obj)}")


class World:
    """The seeded world. Everything (facts, renders, splits, requests) is a function of `seed`."""

    def __init__(self, seed: int = 0, n_train_views: int = 24, n_heldout_views: int = 4):
        self.seed = seed
        rng = np.random.default_rng(seed)
        names = list(NAMES)
        rng.shuffle(names)
        combos = list(itertools.product(PATTERNS, COLOURS))
        entities: list[Entity] = []
        for i, (pattern, colour) in enumerate(combos):
            facts = []
            for attr in FACT_ATTRIBUTES:
                taken = {e.fact(attr) for e in entities if _lookalike(pattern, colour, e.pattern, e.colour)}
                choices = [v for v in ATTRIBUTE_VALUES[attr] if v not in taken] or ATTRIBUTE_VALUES[attr]
                facts.append((attr, str(rng.choice(choices))))
            entities.append(Entity(i, pattern, colour, names[i], tuple(facts)))
        self.entities: list[Entity] = entities
        self.by_name = {e.name: e for e in entities}
        self.train_views = list(range(n_train_views))
        self.heldout_views = list(range(n_train_views, n_train_views + n_heldout_views))
        start = n_train_views + n_heldout_views
        self.heldout_style_views = list(range(start, start + n_heldout_views))
        self._train_phr: dict[tuple[str, bool], list[Phrasing]] = {}
        self._held_phr: dict[tuple[str, bool], list[Phrasing]] = {}
        for kind in IMAGE_KINDS:
            self._split_phrasings(kind, image=True)
        for kind in TEXT_KINDS:
            self._split_phrasings(kind, image=False)

    def params(self) -> dict:
        return {
            "seed": self.seed, "entities": len(self.entities), "patterns": PATTERNS,
            "colours": list(COLOURS), "attributes": list(FACT_ATTRIBUTES),
            "train_views": len(self.train_views), "heldout_views": len(self.heldout_views),
            "train_styles": list(TRAIN_STYLES), "heldout_style": HELDOUT_STYLE,
            "image_kinds": list(IMAGE_KINDS), "text_kinds": list(TEXT_KINDS),
            "train_phrasings": sum(len(v) for v in self._train_phr.values()),
            "heldout_phrasings": sum(len(v) for v in self._held_phr.values()),
        }

    # ------------------------------------------------------------------ phrasings
    def _split_phrasings(self, kind: str, image: bool) -> None:
        objs = (SCENES if kind == "caption" else IMAGE_OBJECTS) if image else TEXT_OBJECTS
        allp = [Phrasing(kind, p, q, o) for p in PREFIXES for q in PREDICATES[kind] for o in objs]
        rng = np.random.default_rng([self.seed, 7, IMAGE_KINDS.index(kind), int(image)])
        order = rng.permutation(len(allp))
        n_held = int(round(HELDOUT_FRACTION * len(allp)))
        held = [allp[i] for i in order[:n_held]]
        train = [allp[i] for i in order[n_held:]]
        # every word of a held-out phrasing must be seen in training: move offenders to train
        seen = {(x.predicate, x.obj, x.prefix) for x in train}
        seen_pred = {x.predicate for x in train}
        seen_obj = {x.obj for x in train}
        seen_pre = {x.prefix for x in train}
        ok = [h for h in held if h.predicate in seen_pred and h.obj in seen_obj and h.prefix in seen_pre]
        train += [h for h in held if h not in ok]
        assert not seen & {(x.predicate, x.obj, x.prefix) for x in ok}
        self._train_phr[(kind, image)] = train
        self._held_phr[(kind, image)] = ok

    def phrasings(self, kind: str, image: bool = True, heldout: bool = False) -> list[Phrasing]:
        table = self._held_phr if heldout else self._train_phr
        return list(table[(kind, image)])

    def question(self, entity: Entity, kind: str, image: bool, heldout: bool, rng) -> str:
        """One prompt about `entity` (image: the entity is in the image; text: it is named)."""
        options = self.phrasings(kind, image, heldout)
        ph = options[int(rng.integers(len(options)))]
        return ph.prompt(None if image else entity.name)

    # ------------------------------------------------------------------ look-alikes
    def lookalikes(self, entity: Entity) -> list[Entity]:
        return [e for e in self.entities if e is not entity
                and _lookalike(entity.pattern, entity.colour, e.pattern, e.colour)]

    # ------------------------------------------------------------------ rendering
    def style_of(self, view: int) -> str:
        if view in self.heldout_style_views:
            return HELDOUT_STYLE
        return TRAIN_STYLES[view % len(TRAIN_STYLES)]

    def render(self, entity: Entity | str, view: int, style: str | None = None) -> Image.Image:
        """32x32 RGB render of `entity`; deterministic in (seed, entity, view, style)."""
        ent = self.by_name[entity] if isinstance(entity, str) else entity
        style = style or self.style_of(view)
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r} (known: {STYLES})")
        return _render(self.seed, ent.index, ent.pattern, COLOURS[ent.colour], view, style).copy()

    def image_filename(self, entity: Entity, view: int, style: str | None = None) -> str:
        return f"{entity.name}_v{view:02d}_{style or self.style_of(view)}.png"

    def save_image(self, entity: Entity, view: int, image_dir: Path, style: str | None = None) -> str:
        rel = self.image_filename(entity, view, style)
        path = Path(image_dir) / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.render(entity, view, style).save(path)
        return rel

    def answer_sets(self) -> list[list[str]]:
        """The disjoint candidate sets answers come from (names, body colours, stripe colours,
        each fact attribute's values): the alternatives a question's belief ranks."""
        return [[e.name for e in self.entities], list(COLOURS), list(PATTERNS)] + \
            [list(v) for v in ATTRIBUTE_VALUES.values()]

    # ------------------------------------------------------------------ corpora
    def corpus(self) -> list[str]:
        """Every string that can appear (prompts of all phrasings, all answers)."""
        lines = []
        names = [e.name for e in self.entities]
        for (kind, image), _ in self._train_phr.items():
            for ph in self.phrasings(kind, image) + self.phrasings(kind, image, heldout=True):
                if image:
                    lines.append(ph.prompt())
                else:
                    lines.extend(ph.prompt(n) for n in names)
        lines.extend(names + PATTERNS + list(COLOURS))
        for values in ATTRIBUTE_VALUES.values():
            lines.extend(values)
        return lines

    # ------------------------------------------------------------------ datasets
    def training_examples(self, image_reps: int = 3, text_reps: int = 16) -> list[Sample]:
        """The pretraining set: every entity x training view x image kind (`image_reps`
        training phrasings each) and every entity x text kind (`text_reps` phrasings each)."""
        rng = np.random.default_rng([self.seed, 11])
        out: list[Sample] = []
        for e in self.entities:
            for v in self.train_views:
                img = self.render(e, v)
                for kind in IMAGE_KINDS:
                    for _ in range(image_reps):
                        out.append(Sample(self.question(e, kind, True, False, rng), e.answer(kind), img))
            for kind in TEXT_KINDS:
                for _ in range(text_reps):
                    out.append(Sample(self.question(e, kind, False, False, rng), e.answer(kind)))
        return out

    def heldout_splits(self, per_cell: int = 1) -> dict[str, list[Sample]]:
        """Held-out evaluation: held-out views (training phrasings), held-out phrasings
        (training views), both held out, text-only facts with held-out phrasings, and the
        held-out visual style (training phrasings)."""
        rng = np.random.default_rng([self.seed, 13])
        splits: dict[str, list[Sample]] = {k: [] for k in (
            "heldout_views", "heldout_phrasings", "heldout_both", "text_heldout_phrasings", "heldout_style")}
        for e in self.entities:
            for kind in IMAGE_KINDS:
                a = e.answer(kind)
                for _ in range(per_cell):
                    for v in self.heldout_views:
                        img = self.render(e, v)
                        splits["heldout_views"].append(Sample(self.question(e, kind, True, False, rng), a, img))
                        splits["heldout_both"].append(Sample(self.question(e, kind, True, True, rng), a, img))
                    for v in rng.choice(self.train_views, size=4, replace=False):
                        img = self.render(e, int(v))
                        splits["heldout_phrasings"].append(Sample(self.question(e, kind, True, True, rng), a, img))
                    for v in self.heldout_style_views:
                        img = self.render(e, v)
                        splits["heldout_style"].append(Sample(self.question(e, kind, True, False, rng), a, img))
            for kind in TEXT_KINDS:
                for _ in range(4 * per_cell):
                    splits["text_heldout_phrasings"].append(
                        Sample(self.question(e, kind, False, True, rng), e.answer(kind)))
        return splits

    def heldout_examples(self) -> list[Sample]:
        """All held-out evaluation samples (the splits of `heldout_splits` concatenated)."""
        return [s for split in self.heldout_splits().values() for s in split]

    # ------------------------------------------------------------------ edits
    def demo_requests(self, n: int, image_dir: str | Path, seed: int = 0) -> list:
        """`n` edit requests (schemas.EditRequest) on VQA facts; PNGs are written under
        `image_dir` and referenced by paths relative to it. Deterministic for a given seed."""
        from schemas.request import EditRequest

        image_dir = Path(image_dir)
        rng = np.random.default_rng([self.seed, 17, seed])
        order = list(rng.permutation(len(self.entities)))
        plan = [(self.entities[int(order[i % len(order)])], FACT_ATTRIBUTES[int(rng.integers(len(FACT_ATTRIBUTES)))])
                for i in range(n)]
        # a locality probe must not ask about a fact this batch edits on purpose (its old answer
        # is meant to change): like MMEdit's, whose probes come from unrelated datasets
        edited = {(e.name, a) for e, a in plan}
        requests = []
        for i, (ent, attr) in enumerate(plan):
            current = ent.fact(attr)
            alt = str(rng.choice([v for v in ATTRIBUTE_VALUES[attr] if v != current]))
            train_phr = self.phrasings(attr, True)
            picks = rng.choice(len(train_phr), size=int(rng.integers(3, 6)) + 1, replace=False)
            src = train_phr[int(picks[0])].prompt()
            train_rephrase = [train_phr[int(j)].prompt() for j in picks[1:]]
            held_phr = self.phrasings(attr, True, heldout=True)
            rephrase = [held_phr[int(j)].prompt() for j in
                        rng.choice(len(held_phr), size=int(rng.integers(1, 4)), replace=False)]
            views = [int(v) for v in rng.permutation(self.train_views)]
            edit_view, train_views = views[0], views[1:1 + int(rng.integers(3, 6))]
            held_views = [int(v) for v in rng.choice(self.heldout_views, size=int(rng.integers(1, 4)), replace=False)]
            others = [e for e in self.entities if e is not ent]
            # text locality: facts about other entities, named
            loc, loc_ans = [], []
            for j in rng.choice(len(others), size=int(rng.integers(2, 5)), replace=False):
                o = others[int(j)]
                kinds = [k for k in FACT_ATTRIBUTES if (o.name, k) not in edited] \
                    or [k for k in TEXT_KINDS if k not in FACT_ATTRIBUTES]
                kind = kinds[int(rng.integers(len(kinds)))]
                loc.append(self.question(o, kind, False, False, rng))
                loc_ans.append(o.answer(kind))
            # multimodal locality: other entities' images, look-alikes first, same attribute
            looks = self.lookalikes(ent)
            k = int(rng.integers(2, 5))
            chosen = [looks[int(j)] for j in rng.choice(len(looks), size=min(len(looks), max(1, k // 2)), replace=False)]
            rest = [e for e in others if e not in chosen]
            chosen += [rest[int(j)] for j in rng.choice(len(rest), size=k - len(chosen), replace=False)]
            m_loc, m_loc_q, m_loc_a = [], [], []
            for o in chosen:
                kind = attr if rng.random() < 0.7 else IMAGE_KINDS[int(rng.integers(len(IMAGE_KINDS)))]
                if (o.name, kind) in edited:  # never an edited fact: another of its attributes
                    kinds = [k for k in IMAGE_KINDS if (o.name, k) not in edited]
                    kind = kinds[int(rng.integers(len(kinds)))]
                m_loc.append(self.save_image(o, int(rng.choice(self.train_views)), image_dir))
                m_loc_q.append(self.question(o, kind, True, False, rng))
                m_loc_a.append(o.answer(kind))
            requests.append(EditRequest(
                id=f"edit-{seed}-{i:03d}",
                image=self.save_image(ent, edit_view, image_dir),
                src=src, alt=alt, pred=current, subject=ent.name,
                rephrase=rephrase,
                image_rephrase=[self.save_image(ent, v, image_dir) for v in held_views],
                loc=loc, loc_ans=loc_ans, m_loc=m_loc, m_loc_q=m_loc_q, m_loc_a=m_loc_a,
                train_rephrase=train_rephrase,
                train_image_rephrase=[self.save_image(ent, v, image_dir) for v in train_views],
                requester=REQUESTERS[int(rng.integers(len(REQUESTERS)))],
                reason=f"catalogue correction: the {attr} of {ent.name} is now {alt}",
                ticket=f"KB-{1000 + 37 * seed + i}",
            ))
        return requests

    def kind_of(self, prompt: str) -> str | None:
        """The attribute an image prompt asks about (training or held-out phrasing), or None."""
        if not hasattr(self, "_kind_by_prompt"):
            self._kind_by_prompt = {ph.prompt(): kind for kind in IMAGE_KINDS for held in (False, True)
                                    for ph in self.phrasings(kind, True, held)}
        return self._kind_by_prompt.get(" ".join(prompt.split()))

    def locality_pool(self, n: int, exclude_subject: str | Iterable[str], seed: int = 0) -> list[Sample]:
        """`n` unrelated samples (about half with images, training views and phrasings) about
        entities other than `exclude_subject`, for optimisation environments."""
        excluded = {exclude_subject} if isinstance(exclude_subject, str) else set(exclude_subject)
        others = [e for e in self.entities if e.name not in excluded]
        if not others:
            raise ValueError("no entity left outside exclude_subject")
        rng = np.random.default_rng([self.seed, 19, seed])
        out = []
        for i in range(n):
            o = others[int(rng.integers(len(others)))]
            if i % 2 == 0:
                kind = IMAGE_KINDS[int(rng.integers(len(IMAGE_KINDS)))]
                img = self.render(o, int(rng.choice(self.train_views)))
                out.append(Sample(self.question(o, kind, True, False, rng), o.answer(kind), img))
            else:
                kind = TEXT_KINDS[int(rng.integers(len(TEXT_KINDS)))]
                out.append(Sample(self.question(o, kind, False, False, rng), o.answer(kind)))
        return out


# ----------------------------------------------------------------------------- helpers
def _lookalike(pattern_a: str, colour_a: str, pattern_b: str, colour_b: str) -> bool:
    if (pattern_a, colour_a) == (pattern_b, colour_b):
        return False
    if colour_a == colour_b:
        return any({pattern_a, pattern_b} == set(p) for p in LOOKALIKE_PATTERNS)
    if pattern_a == pattern_b:
        return any({colour_a, colour_b} == set(p) for p in LOOKALIKE_COLOURS)
    return False


def _shape_points(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def poly(n: int, radii: list[float], offset: float) -> list[tuple[float, float]]:
        pts = []
        for k in range(n):
            a = offset + rot + 2 * np.pi * k / n
            rr = radii[k % len(radii)]
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        return pts

    if shape == "hexagon":
        return poly(6, [r], 0.0)
    if shape == "square":
        return poly(4, [r * 1.05], np.pi / 4)
    if shape == "diamond":
        return poly(4, [r * 1.1], 0.0)
    if shape == "triangle":
        return poly(3, [r * 1.15], -np.pi / 2)
    if shape == "star":
        return poly(10, [r * 1.15, r * 0.5], -np.pi / 2)
    raise ValueError(shape)


def _stripe_mask(orientation: int, phase: int) -> np.ndarray:
    """32x32 {0,1} mask of 2-pixel stripes (period 4): 0 horizontal, 1 vertical, 2/3 diagonal."""
    y, x = np.mgrid[0:32, 0:32]
    coord = [y, x, x + y, x - y + 64][orientation] + phase
    return ((coord // 2) % 2 == 0).astype(float)


@lru_cache(maxsize=8192)
def _render(seed: int, index: int, pattern: str, rgb: tuple[int, int, int], view: int, style: str) -> Image.Image:
    """A blob of a view-dependent outline in the entity's body colour, striped in its stripe
    colour (`pattern`), on a ground whose brightness is the style."""
    S = 4  # supersampling of the blob outline
    rng = np.random.default_rng([seed, 3, index, view, STYLES.index(style)])
    colour = np.array([np.clip(c + rng.integers(-14, 15), 0, 255) for c in rgb], dtype=np.float32)
    lo, hi = {"dark": (10, 50), "grey": (60, 100), "light": (200, 240)}[style]
    bg = np.array([np.clip(int(rng.integers(lo, hi)) + rng.integers(-8, 9), 0, 255) for _ in range(3)],
                  dtype=np.float32)
    blob = BLOB_SHAPES[int(rng.integers(len(BLOB_SHAPES)))]
    r = float(rng.uniform(9.0, 12.5)) * S
    cx = (16 + float(rng.uniform(-3.0, 3.0))) * S
    cy = (16 + float(rng.uniform(-3.0, 3.0))) * S
    rot = float(np.deg2rad(rng.uniform(-20, 20)))
    canvas = Image.new("L", (32 * S, 32 * S), 0)
    draw = ImageDraw.Draw(canvas)
    if blob == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_shape_points(blob, cx, cy, r, rot), fill=255)
    cover = np.asarray(canvas.resize((32, 32), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0
    stripe = np.array([np.clip(c + rng.integers(-10, 11), 0, 255) for c in STRIPES[pattern]], dtype=np.float32)
    mask = _stripe_mask(int(rng.integers(4)), int(rng.integers(4)))[..., None]
    fill = mask * stripe + (1 - mask) * colour
    arr = cover * fill + (1 - cover) * bg
    arr = arr + rng.normal(0.0, 6.0, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
