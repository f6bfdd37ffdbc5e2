"""Environments: the held-out split never reaches optimisation; OUT probes avoid the subject."""

from odedit.config import ODEditConfig
from odedit.environments import build_environments, request_hash


def test_heldout_probes_never_in_training_environments(world, world_requests):
    root, requests = world_requests
    for req in requests:
        pool = world.locality_pool(64, req.subject, seed=0)
        es = build_environments(req, root, ODEditConfig(), pool)
        kinds = {e.kind for e in es.train}
        assert kinds == {"IN", "SE", "OUT"}
        train_prompts = {s.prompt for e in es.train if e.kind != "IN" for s in e.samples}
        held = set(req.rephrase) | set(req.loc) | set(req.m_loc_q)
        assert not (train_prompts & held) - {req.src}
        for e in es.train:
            if e.kind == "OUT":
                assert all(req.subject not in s.prompt.split() for s in e.samples)
        held_images = [s.image.tobytes() for s in es.heldout.m_gen]
        se_images = [s.image.tobytes() for e in es.train if e.kind == "SE" for s in e.samples]
        assert not set(held_images) & set(se_images)


def test_request_hash_stable_and_ignores_audit_fields(world_requests):
    _, requests = world_requests
    r = requests[0]
    assert request_hash(r) == request_hash(r.model_copy(update={"requester": "someone else", "id": "x"}))
    assert request_hash(r) != request_hash(r.model_copy(update={"alt": r.alt + "x"}))
