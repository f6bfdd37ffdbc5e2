"""Environment sets round-trip through `datasets` and are keyed by the request's content hash."""

from odedit import envstore
from odedit.config import ODEditConfig
from odedit.environments import build_environments


def _summary(es):
    train = [(e.name, e.kind, s.prompt, s.target, None if s.image is None else s.image.tobytes())
             for e in es.train for s in e.samples]
    held = [(g, s.prompt, s.target, None if s.image is None else s.image.tobytes())
            for g in envstore.HELDOUT_GROUPS for s in getattr(es.heldout, g)]
    return train, held


def test_roundtrip_and_same_request_same_key(world, world_requests, tmp_path):
    root, requests = world_requests
    req = requests[0]
    es = build_environments(req, root, ODEditConfig(), world.locality_pool(64, req.subject))
    path = envstore.save(es, tmp_path)
    assert path.name == es.request_hash
    back = envstore.load(tmp_path, es.request_hash)
    assert _summary(back) == _summary(es)
    again = build_environments(req.model_copy(update={"ticket": "other"}), root, ODEditConfig(),
                               world.locality_pool(64, req.subject))
    assert envstore.save(again, tmp_path) == path
    other = build_environments(requests[1], root, ODEditConfig(), world.locality_pool(64, requests[1].subject))
    assert envstore.save(other, tmp_path) != path
