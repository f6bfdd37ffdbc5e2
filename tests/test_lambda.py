"""ODEdit's dual variable lambda (PAPER Eq. 13): it acts within an edit - rises while the TV
penalty is above its constraint level, falls below it, stays put with `[-dual]` - is logged per
step on the edit record, and its features take O(edited parameters) memory."""

import pytest
import torch

from odedit.config import EditConfig, ODEditConfig
from odedit.editing import run_edits
from odedit.editors.odedit import LambdaNet


@pytest.fixture(autouse=True)
def restore_model(adapter):
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    yield
    adapter.model.load_state_dict(state)


def _lam(adapter, world, world_requests, **odedit):
    root, requests = world_requests
    cfg = EditConfig.from_dict({"method": "odedit-ft-l", "seed": 0,
                                "base": {"steps": 14, "early_stop_loss": None},
                                "odedit": {"tv_warmup_steps": 2, "dual": True, **odedit}})
    run = run_edits(adapter, requests[:1], root, cfg, lambda r: world.locality_pool(64, r.subject, seed=0))
    rec = run.records[0]
    assert rec.status == "ok", rec.error
    traj = rec.trajectory
    assert len(traj["loss"]) == len(traj["lam"]) == len(traj["tv_penalty"]) == 14
    assert traj["lam"][:2] == [None, None]  # warm-up: no penalty, no lambda
    return [x for x in traj["lam"] if x is not None], [x for x in traj["tv_penalty"] if x is not None]


def test_lambda_rises_above_the_level_and_falls_below_it(adapter, world, world_requests):
    up, pen = _lam(adapter, world, world_requests, tv_level=1e-3)
    assert min(pen) > 1e-3
    assert all(b > a for a, b in zip(up, up[1:])) and up[-1] > 1.5 * up[0]
    down, pen = _lam(adapter, world, world_requests, tv_level=1e3)
    assert max(pen) < 1e3
    assert all(b < a for a, b in zip(down, down[1:])) and down[-1] < 0.9 * down[0]


def test_dual_off_keeps_lambda_fixed(adapter, world, world_requests):
    from odedit.config import ODEditConfig

    assert ODEditConfig().dual is False  # the default (TUNED: the dual step cost reliability)
    lam, _ = _lam(adapter, world, world_requests, dual=False, lambda_init=2.0)
    assert lam == [2.0] * len(lam)  # exactly lambda_init: no network is built


def test_lambda_features_are_a_count_sketch_in_linear_memory():
    n = 300_000
    p = torch.nn.Parameter(torch.zeros(n))
    net = LambdaNet([p], ODEditConfig(), seed=0)
    per_param = sum(t.numel() * t.element_size() for t in (net._bucket, net._sign)) / n
    assert per_param <= 2  # a uint8 bucket + an int8 sign; a dense n x 32 float projection is 128
    with torch.no_grad():
        p.add_(torch.randn(n))
    f1 = net.features([p])
    with torch.no_grad():
        p.mul_(3.0)
    assert torch.allclose(net.features([p]), 3 * f1, rtol=1e-4, atol=1e-4)  # linear in the change
    # a count sketch preserves the norm in expectation (JL-like): |features| ~ |delta| * scale
    ratio = net.features([p]).norm() / (p.detach().norm() * net._scale)
    assert 0.5 < float(ratio) < 1.5
