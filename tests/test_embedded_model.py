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
    torch.set_num_threads(2)
    return MLLMAdapter.load(default_model_path(), device="cpu")


@pytest.fixture(scope="module")
def world(report) -> World:
    return World(report["seed"])


def test_report_and_size(report):
    for key in ("seed", "steps", "wall_seconds", "accuracies", "world", "spec"):
        assert key in report
    weights = list(default_model_path().glob("*.safetensors"))
    assert weights and sum(p.stat().st_size for p in weights) <= 20 * 2**20
    assert report["accuracies"]["heldout_views"] >= 0.9
    assert report["accuracies"]["heldout_phrasings"] >= 0.9


@pytest.mark.parametrize("split", ["heldout_views", "heldout_phrasings", "text_heldout_phrasings"])
def test_shipped_model_generalises(adapter, world, split):
    samples = random.Random(0).sample(world.heldout_splits()[split], 160)
    assert first_token_accuracy(adapter, samples) >= 0.9


def test_greedy_answer_matches_world(adapter, world):
    ent = world.entities[0]
    prompt = world.phrasings("home")[0].prompt()
    answers = [adapter.answer(prompt, world.render(ent, v), max_new_tokens=3) for v in world.train_views[:4]]
    assert sum(a == ent.fact("home") for a in answers) >= 3
