"""Cost choices that must not change ODEdit's values: the TV penalty taken the cheap way (one
backward, a scale per row) equals the paper's definition taken the direct way (one dR_e/dw per
environment), and image / text rows merged into one padded batch or kept as two give the same
risks. And the one that does change them, stochastic environments, draws what it says."""

import pytest
import torch

from odedit.config import EditConfig
from odedit.editors.env_batch import EnvBatch
from odedit.editors.odedit import ODEditObjective
from odedit.editors.registry import BASE_EDITORS
from odedit.environments import build_environments


@pytest.mark.parametrize("cache_prefix", [True, False])
def test_rowwise_slopes_equal_one_grad_per_environment(adapter, world, world_requests, cache_prefix):
    root, requests = world_requests
    cfg = EditConfig.from_dict({"method": "odedit-ft-l", "base": {"cache_prefix": cache_prefix},
                                "odedit": {"env_samples": 0}})  # every row, both ways
    es = build_environments(requests[0], root, cfg.odedit, world.locality_pool(64, requests[0].subject), seed=0)
    editor = BASE_EDITORS["ft-l"](adapter, cfg.base)
    params = editor.begin()
    try:
        with torch.no_grad():  # away from the base weights, where every slope is informative
            params[0].add_(0.02 * torch.randn(params[0].shape, generator=torch.Generator().manual_seed(0)))
        batch = EnvBatch(adapter, es.train, prefix_layer=editor.layer if cache_prefix else None)
        objective = ODEditObjective(adapter, batch, params, cfg.odedit, seed=0)
        got = {}
        for how in ("loop", "rows"):
            objective.config.tv_grads, objective.step_index = how, cfg.odedit.tv_warmup_steps
            params[0].grad = None
            loss, stats = objective()
            loss.backward()
            got[how] = (stats["tv_penalty"], params[0].grad.clone())
        assert got["loop"][0] > 0
        assert got["rows"][0] == pytest.approx(got["loop"][0], rel=1e-3)
        diff = (got["rows"][1] - got["loop"][1]).norm() / got["loop"][1].norm()
        assert diff < 1e-3, diff
    finally:
        editor.abort()


def test_merged_and_separate_cached_batches_give_the_same_risks(adapter, world, world_requests, monkeypatch):
    """Whether image and text rows share one padded batch or run as two is a cost choice only."""
    from odedit.editors import env_batch

    root, requests = world_requests
    cfg = EditConfig.from_dict({"method": "odedit-ft-l", "odedit": {"env_samples": 0}})
    es = build_environments(requests[1], root, cfg.odedit, world.locality_pool(64, requests[1].subject), seed=0)
    layer = BASE_EDITORS["ft-l"](adapter, cfg.base).layer
    stats = {}
    for merge in (True, False):
        monkeypatch.setattr(env_batch, "merge_pays", lambda encoded, slack=1.25, m=merge: m)
        batch = env_batch.EnvBatch(adapter, es.train, prefix_layer=layer)
        assert len(batch.encoded) == (1 if merge else 2)
        with torch.no_grad():
            _, stats[merge] = ODEditObjective(adapter, batch, [], cfg.odedit, seed=0)()
    assert stats[True].keys() == stats[False].keys()
    for k in stats[True]:
        assert stats[False][k] == pytest.approx(stats[True][k], rel=1e-4, abs=1e-6), k


def test_stochastic_environments_draw_few_rows_per_step_and_all_over_the_run(adapter, world, world_requests):
    """env_samples=1: every step sees IN whole and one row of each SE / OUT environment; over
    the steps every row is drawn; the edit still lands."""
    import random

    root, requests = world_requests
    cfg = EditConfig.from_dict({"method": "odedit-ft-l", "odedit": {"env_samples": 1}})
    req = requests[2]
    es = build_environments(req, root, cfg.odedit, world.locality_pool(64, req.subject), seed=0)
    layer = BASE_EDITORS["ft-l"](adapter, cfg.base).layer
    batch = EnvBatch(adapter, es.train, prefix_layer=layer)
    assert batch.can_sample
    seen: dict[str, set] = {}
    rng = random.Random(0)
    for _ in range(40):
        view, keep = batch.sample(1, rng, whole=("IN",))
        for er, full in zip(view.rows, batch.rows):
            assert len(er.rows) == (len(full.rows) if er.env.kind == "IN" else 1)
            orig = keep[er.group][er.rows].tolist()
            assert set(orig) <= set(full.rows.tolist())
            seen.setdefault((er.env.name, er.group), set()).update(orig)
    assert all(seen[(f.env.name, f.group)] == set(f.rows.tolist()) for f in batch.rows)

    from odedit.delta import remove_delta
    from odedit.editors.optimise import optimise_edit

    out = optimise_edit(adapter, es, cfg)
    try:
        assert adapter.answer(req.src, es.heldout.reliability[0].image).split()[:1] == req.alt.split()[:1]
    finally:
        remove_delta(adapter.model, out.restore)
