"""The seeded world: determinism, splits, and demo edit requests."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from odedit.models.world import (
    ATTRIBUTE_VALUES, FACT_ATTRIBUTES, IMAGE_KINDS, TEXT_KINDS, World, prompt_of,
)
from schemas.request import EditRequest


@pytest.fixture(scope="module")
def world() -> World:
    return World(0)


@pytest.fixture(scope="module")
def requests(world, tmp_path_factory):
    image_dir = tmp_path_factory.mktemp("images")
    return image_dir, world.demo_requests(12, image_dir, seed=3)


def test_world_is_deterministic_per_seed(tmp_path):
    a, b, c = World(0), World(0), World(1)
    assert [(e.name, e.pattern, e.colour, e.facts) for e in a.entities] == \
           [(e.name, e.pattern, e.colour, e.facts) for e in b.entities]
    assert [e.facts for e in a.entities] != [e.facts for e in c.entities]
    e = a.entities[5]
    assert a.render(e, 3).tobytes() == b.render(e, 3).tobytes()
    assert a.render(e, 3).tobytes() != a.render(e, 4).tobytes()
    assert [s.prompt for s in a.training_examples()[:50]] == [s.prompt for s in b.training_examples()[:50]]
    ra = [r.model_dump() for r in a.demo_requests(4, tmp_path / "a", seed=1)]
    rb = [r.model_dump() for r in b.demo_requests(4, tmp_path / "b", seed=1)]
    assert ra == rb
    assert (tmp_path / "a" / ra[0]["image"]).read_bytes() == (tmp_path / "b" / rb[0]["image"]).read_bytes()


def test_entities_and_renders(world):
    assert len({e.name for e in world.entities}) == len(world.entities) >= 24
    assert all(world.lookalikes(e) for e in world.entities if e.pattern in ("pink", "white"))
    for e in world.entities:
        for la in world.lookalikes(e):  # look-alikes never share a fact: locality is meaningful
            assert all(e.fact(a) != la.fact(a) for a in FACT_ATTRIBUTES)
    img = world.render(world.entities[0], 0)
    assert img.size == (32, 32) and img.mode == "RGB"
    styles = {world.style_of(v) for v in world.train_views}
    assert len(styles) >= 2 and world.style_of(world.heldout_style_views[0]) not in styles


def test_prompts_format_and_one_word_answers(world):
    for s in world.training_examples()[:500]:
        assert s.prompt.startswith("question: ") and s.prompt.endswith(" ? answer:")
        assert len(s.target.split()) == 1
    assert prompt_of("what  is  it") == "question: what is it ? answer:"


def test_phrasing_split_is_compositional(world):
    for kind in IMAGE_KINDS:
        train, held = world.phrasings(kind), world.phrasings(kind, heldout=True)
        assert held and not set(held) & set(train)
        for h in held:  # unseen combinations of seen parts
            assert h.prefix in {t.prefix for t in train}
            assert h.predicate in {t.predicate for t in train}
            assert h.obj in {t.obj for t in train}
    for kind in TEXT_KINDS:
        assert world.phrasings(kind, image=False, heldout=True)


def test_heldout_never_in_training(world):
    train = world.training_examples()
    train_prompts = {s.prompt for s in train}
    train_images = {s.image.tobytes() for s in train if s.image is not None}
    splits = world.heldout_splits()
    assert {"heldout_views", "heldout_phrasings", "heldout_both", "text_heldout_phrasings"} <= set(splits)
    for s in splits["heldout_phrasings"] + splits["heldout_both"] + splits["text_heldout_phrasings"]:
        assert s.prompt not in train_prompts
    for s in splits["heldout_views"] + splits["heldout_both"] + splits["heldout_style"]:
        assert s.image.tobytes() not in train_images


def test_tokenizer_covers_corpus(world):
    from odedit.models.tiny_llava import train_word_tokenizer

    tok = train_word_tokenizer(world.corpus())
    answers = [e.name for e in world.entities] + [v for vs in ATTRIBUTE_VALUES.values() for v in vs]
    for a in answers:
        ids = tok(a, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id
    sample = world.heldout_examples()[0]
    assert tok.unk_token_id not in tok(sample.prompt)["input_ids"]


def test_demo_requests_are_valid(world, requests):
    image_dir, reqs = requests
    assert len(reqs) == 12 and len({r.id for r in reqs}) == 12
    for r in reqs:
        EditRequest.model_validate(r.model_dump())
        ent = world.by_name[r.subject]
        attr = next(a for a in FACT_ATTRIBUTES if ent.fact(a) == r.pred)
        assert r.alt != r.pred and r.alt in ATTRIBUTE_VALUES[attr]
        assert 1 <= len(r.rephrase) <= 3 and 1 <= len(r.image_rephrase) <= 3
        assert 2 <= len(r.loc) == len(r.loc_ans) <= 4
        assert 2 <= len(r.m_loc) == len(r.m_loc_q) == len(r.m_loc_a) <= 4
        assert 3 <= len(r.train_rephrase) <= 5 and 3 <= len(r.train_image_rephrase) <= 5
        assert r.requester and r.reason and r.ticket
        for rel in [r.image, *r.image_rephrase, *r.m_loc, *r.train_image_rephrase]:
            assert not Path(rel).is_absolute()
            path = image_dir / rel
            assert path.is_file()
            with Image.open(path) as im:
                assert im.convert("RGB").size == (32, 32)


def test_heldout_probes_disjoint_from_train_probes(world, requests):
    _, reqs = requests
    for r in reqs:
        assert not set(r.rephrase) & (set(r.train_rephrase) | {r.src})
        assert not set(r.image_rephrase) & (set(r.train_image_rephrase) | {r.image})
        held_images = {int(p.split("_v")[1][:2]) for p in r.image_rephrase}
        assert held_images <= set(world.heldout_views)
        train_phr = {p.prompt() for k in IMAGE_KINDS for p in world.phrasings(k)}
        assert not set(r.rephrase) & train_phr


def test_locality_probes_never_about_subject(world, requests):
    _, reqs = requests
    n_lookalike = 0
    for r in reqs:
        ent = world.by_name[r.subject]
        assert all(r.subject not in q.split() for q in r.loc)
        owners = [world.by_name[p.split("_v")[0]] for p in r.m_loc]
        assert ent not in owners
        n_lookalike += any(o in world.lookalikes(ent) for o in owners)
        pool = world.locality_pool(40, r.subject, seed=1)
        assert any(s.image is not None for s in pool) and any(s.image is None for s in pool)
        assert all(r.subject not in s.prompt.split() for s in pool)
    assert n_lookalike >= len(reqs) // 2
