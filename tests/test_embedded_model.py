"""The shipped embedded model: it loads through the adapter and knows its world."""

from __future__ import annotations

import json
import random

import pytest
import torch

from odedit.models.adapter import MLLMAdapter
from odedit.models.embedded import REPORT_NAME, default_model_path, first_token_accuracy
from odedit.models.world import World


@pytest.fixture(scope="module")
def report() -> dict:
    path = default_model_path() / REPORT_NAME
    assert path.is_file(), "train_report.json missing from the shipped model"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def adapter() -> MLLMAdapter:
    return MLLMAdapter.load(default_model_path(), device="cpu")


@pytest.fixture(scope="module")
def world(report) -> World:
    return World(report["seed"])


def test_report_and_size(report):
    for key in ("seed", "steps", "accuracies", "world", "spec"):
        assert key in report
    weights = list(default_model_path().glob("*.safetensors"))
    assert weights and sum(p.stat().st_size for p in weights) <= 20 * 2**20


@pytest.mark.parametrize("split", ["heldout_views", "heldout_phrasings", "heldout_both",
                                   "text_heldout_phrasings"])
def test_shipped_model_generalises(adapter, world, split):
    samples = random.Random(0).sample(world.heldout_splits()[split], 160)
    assert first_token_accuracy(adapter, samples) >= 0.9


def test_shipped_model_recognises_entities_in_new_views(adapter, world):
    """Naming the entity in a held-out view needs both colours (chance is 1/24)."""
    samples = [s for s in world.heldout_splits()["heldout_views"] if s.target in world.by_name]
    assert first_token_accuracy(adapter, samples) >= 0.9


def test_greedy_answer_is_one_world_word(adapter, world):
    ent = world.entities[0]
    prompt = world.phrasings("colour")[0].prompt()
    answers = [adapter.answer(prompt, world.render(ent, v), max_new_tokens=3) for v in world.train_views[:4]]
    vocab = set(world.corpus())
    assert all(a in vocab for a in answers)  # one in-vocabulary word each


def test_answers_in_batches_are_the_answers_one_at_a_time(adapter, world, tmp_path):
    """The regression probes are answered in left-padded batches: every answer is the one the
    probe gets asked alone (images and text-only questions mixed, a batch smaller than the set)."""
    from odedit.environments import load_image
    from odedit.lifecycle.gate import world_probes

    probes = world_probes(world, tmp_path)[:40]
    items = [(p.prompt, load_image(p.image, tmp_path) if p.image else None) for p in probes]
    assert {im is None for _, im in items} == {True, False}
    alone = [adapter.answer(q, im, max_new_tokens=4) for q, im in items]
    assert adapter.answers(items, max_new_tokens=4, batch_size=7) == alone
    assert len(set(alone)) > 5  # real answers, not one repeated string
