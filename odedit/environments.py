"""ODEdit's environments, built from one edit request.

  IN   the edit itself: (edit image, edit prompt) -> new target
  SE   semantic-equivalent shifts (give the new answer): training rephrasings with the edit
       image, and the edit prompt with other training images of the subject and with
       transformed copies of the edit image (PIL augmentations, INFERRED choice)
  OUT  out-of-scope prompts (keep the old answer): text-only and image probes drawn from a
       locality pool, never about the subject and never one of the held-out probes

The request's `rephrase`, `image_rephrase`, `loc*` and `m_loc*` fields form the HELD-OUT
split: they are returned separately and optimisation never sees them. Leak guards (tested in
tests/test_environments.py for the embedded model and for a non-world checkpoint):
  * texts compare after whitespace/case normalisation; images by CONTENT hash (`image_hash`,
    decoded RGB pixels), never only by path, so a copy of a held-out image under another name
    or format is still held out;
  * SE/text drops any train rephrasing equal to a held-out prompt (rephrase, loc, m_loc_q);
    SE/image drops any train image whose content is a held-out image (image_rephrase, m_loc);
  * OUT drops held-out prompts/images, anything about the subject, the edit's own image, and
    the edit's own prompt as a text-only probe or with its own image. The edit prompt asked
    about ANOTHER subject's image stays: the classic hard negative (same question, other fact).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageEnhance

from odedit.config import ODEditConfig
from odedit.models.adapter import Sample
from schemas.request import EditRequest


@dataclass
class Environment:
    name: str  # e.g. "IN", "SE/text", "SE/image", "OUT/text", "OUT/image"
    kind: str  # "IN" | "SE" | "OUT"
    samples: list[Sample]


@dataclass
class HeldOut:
    """Evaluation probes that optimisation never sees (EasyEdit's MMEdit metrics)."""

    reliability: list[Sample]
    t_gen: list[Sample] = field(default_factory=list)
    m_gen: list[Sample] = field(default_factory=list)
    t_loc: list[Sample] = field(default_factory=list)
    m_loc: list[Sample] = field(default_factory=list)


@dataclass
class EnvironmentSet:
    request_id: str
    request_hash: str
    train: list[Environment]
    heldout: HeldOut

    def env(self, name: str) -> Environment | None:
        return next((e for e in self.train if e.name == name), None)


def request_hash(request: EditRequest) -> str:
    """Content hash of what defines the edit (not of audit fields): same request, same hash."""
    payload = request.model_dump(
        exclude={"id", "requester", "reason", "ticket", "submitted_at"}, mode="json"
    )
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_image(path: str | Path, image_root: str | Path | None = None) -> Image.Image:
    p = Path(path)
    if image_root is not None and not p.is_absolute():
        p = Path(image_root) / p
    with Image.open(p) as img:
        return img.convert("RGB")


def augment_image(image: Image.Image, rng: random.Random, crop: tuple[float, float] = (0.85, 1.0),
                  degrees: float = 10.0, jitter: float = 0.1) -> Image.Image:
    """A label-preserving transformation: crop-and-resize (side fraction in `crop`), rotation
    within +-`degrees`, brightness/contrast jitter of +-`jitter`. (INFERRED: the paper names
    "image transformations" without listing them; the defaults are the SE environments'.)"""
    w, h = image.size
    scale = rng.uniform(*crop)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    out = out.rotate(rng.uniform(-degrees, degrees), resample=Image.BILINEAR, fillcolor=out.getpixel((0, 0)))
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(1 - jitter, 1 + jitter))
    return ImageEnhance.Contrast(out).enhance(rng.uniform(1 - jitter, 1 + jitter))


def image_hash(image: Image.Image | None) -> str | None:
    """Content hash of an image's decoded RGB pixels (and size): equal pictures, equal hash,
    whatever their path or file format."""
    if image is None:
        return None
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def norm_text(text: str) -> str:
    return " ".join(str(text).lower().split())


def _words(text: str) -> set[str]:
    return set(text.lower().split())


def _thumb(image: Image.Image):
    """A centred 8x8 RGB thumbnail as a unit vector: a crude, model-free look-alike measure."""
    import numpy as np

    v = np.asarray(image.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel()
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-6)


def _pick_out(pool: list[Sample], k: int, edit: Sample, how: str, rng: random.Random) -> list[Sample]:
    """k OUT probes: "nearest" takes those most like the edit - wording overlap (Jaccard) plus,
    for images, thumbnail similarity - i.e. the hard negatives (look-alikes asked the same kind
    of question) an edit is most likely to disturb (PRODUCT choice); "random" a uniform sample."""
    if how == "random" or k >= len(pool):
        return rng.sample(pool, min(k, len(pool)))
    ref = _words(edit.prompt)
    ref_img = _thumb(edit.image) if edit.image is not None else None

    def score(s: Sample) -> float:
        words = _words(s.prompt)
        value = len(ref & words) / max(1, len(ref | words))
        if ref_img is not None and s.image is not None:
            value += float(ref_img @ _thumb(s.image))
        return value

    keyed = [(score(s), rng.random(), i) for i, s in enumerate(pool)]
    return [pool[i] for *_, i in sorted(keyed, reverse=True)[:k]]


def _mentions(text: str, subject: str | None) -> bool:
    return bool(subject) and subject.lower() in text.lower().split()


def build_environments(
    request: EditRequest,
    image_root: str | Path | None,
    config: ODEditConfig,
    locality_pool: Sequence[Sample] = (),
    seed: int = 0,
) -> EnvironmentSet:
    """IN / SE / OUT training environments plus the held-out split of one request."""
    rng = random.Random(f"{seed}:{request_hash(request)}")
    image = load_image(request.image, image_root)
    edit = Sample(request.src, request.alt, image)

    heldout = HeldOut(
        reliability=[edit],
        t_gen=[Sample(q, request.alt, image) for q in request.rephrase],
        m_gen=[Sample(request.src, request.alt, load_image(p, image_root)) for p in request.image_rephrase],
        t_loc=[Sample(q, a) for q, a in zip(request.loc, request.loc_ans)],
        m_loc=[
            Sample(q, a, load_image(p, image_root))
            for p, q, a in zip(request.m_loc, request.m_loc_q, request.m_loc_a)
        ],
    )
    held_prompts = {norm_text(s.prompt) for s in heldout.t_loc + heldout.m_loc + heldout.t_gen}
    held_images = {image_hash(s.image) for s in heldout.m_gen + heldout.m_loc}
    held_paths = {str(p) for p in list(request.image_rephrase) + list(request.m_loc)}
    edit_image = image_hash(image)
    edit_prompt = norm_text(request.src)

    train = [Environment("IN", "IN", [edit])]
    se_text = [Sample(q, request.alt, image) for q in request.train_rephrase if norm_text(q) not in held_prompts]
    if se_text:
        train.append(Environment("SE/text", "SE", se_text))
    se_images = [load_image(p, image_root) for p in request.train_image_rephrase if str(p) not in held_paths]
    se_images = [im for im in se_images if image_hash(im) not in held_images]
    se_images += [augment_image(image, rng) for _ in range(config.n_image_aug)]
    if se_images:
        train.append(Environment("SE/image", "SE", [Sample(request.src, request.alt, im) for im in se_images]))

    def out_ok(s: Sample) -> bool:
        text = norm_text(s.prompt)
        if text in held_prompts or _mentions(s.prompt, request.subject) or _mentions(s.target, request.subject):
            return False
        h = image_hash(s.image)
        if h is None:
            return text != edit_prompt  # the edit's own prompt, text-only
        return h not in held_images and h != edit_image  # held-out image, or the edit's own image

    usable = [s for s in locality_pool if out_ok(s)]
    text_pool = [s for s in usable if s.image is None]
    image_pool = [s for s in usable if s.image is not None]
    out_text = _pick_out(text_pool, config.n_out_text, edit, config.out_selection, rng)
    out_image = _pick_out(image_pool, config.n_out_image, edit, config.out_selection, rng)
    if out_text:
        train.append(Environment("OUT/text", "OUT", out_text))
    if out_image:
        train.append(Environment("OUT/image", "OUT", out_image))
    return EnvironmentSet(request.id, request_hash(request), train, heldout)
