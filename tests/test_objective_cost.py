"""Cost choices that must not change ODEdit's values: the TV penalty taken the cheap ways (in
closed form from the logits, or one backward with a scale per row) equals the paper's
definition taken the direct way (one dR_e/dw per environment), the batched risks equal the
environments' risks taken one by one, and image / text rows merged into one padded batch or kept as two give the same
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
        batch = EnvBatch(adapter, es.train, prefix_layer=editor.layer if cache_prefix else None)
        objective = ODEditObjective(adapter, batch, params, cfg.odedit, seed=0)
        # away from the weights the OUT reference was taken at: there an OUT slope is exactly 0 in
        # closed form, where |.| has no derivative (the autograd ways carry float noise instead)
        with torch.no_grad():
            params[0].add_(0.02 * torch.randn(params[0].shape, generator=torch.Generator().manual_seed(0)))
        # with the prefix cache "rows" takes the slopes in closed form; without it, by autograd
        assert objective._slope_mode(batch, True) == ("closed" if cache_prefix else "rows")
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


def _reference_risks(adapter, batch, pre, cfg):
    """G's risks one environment part at a time, straight from the paper's definitions (what
    the objective computed before it batched them): {kind: mean over environments}, the fit."""
    from odedit.editors import losses

    out = batch.forward(adapter)
    risks, fits, in_states = {}, [], None
    by_env = {}
    for er in batch.rows:
        by_env.setdefault(er.env.name, []).append(er)
    for name, parts in sorted(by_env.items(), key=lambda kv: kv[0] != "IN"):
        risk = 0.0
        for er in parts:
            hidden, logits = out[er.group]
            enc = batch.encoded[er.group]
            lab = enc.labels[er.rows]
            if er.env.kind == "OUT":
                risk += cfg.w_loc * losses.kl(logits[er.rows], pre[er.group][er.rows], lab).mean()
                continue
            n = losses.nll(logits[er.rows], lab).mean()
            fits.append(n.item())
            states = hidden[er.rows][:, :-1][losses.answer_mask(lab)]
            if er.env.kind == "IN":
                in_states, risk = states, risk + cfg.w_rel * n
            else:
                risk += cfg.w_se_nll * n + cfg.w_gen * losses.mmd2(in_states, states)
        risks.setdefault(parts[0].env.kind, []).append(float(risk))
    return {k: sum(v) / len(v) for k, v in risks.items()}, max(fits)


@pytest.mark.parametrize("merge", [True, False])
def test_batched_risks_equal_the_environments_one_by_one(adapter, world, world_requests, monkeypatch, merge):
    from odedit.editors import env_batch

    root, requests = world_requests
    cfg = EditConfig.from_dict({"method": "odedit-ft-l", "odedit": {"env_samples": 0, "tv": False}})
    es = build_environments(requests[1], root, cfg.odedit, world.locality_pool(64, requests[1].subject), seed=0)
    monkeypatch.setattr(env_batch, "merge_pays", lambda encoded, slack=1.25, m=merge: m)
    editor = BASE_EDITORS["ft-l"](adapter, cfg.base)
    params = editor.begin()
    try:
        batch = EnvBatch(adapter, es.train, prefix_layer=editor.layer)
        assert len(batch.encoded) == (1 if merge else 2)
        with torch.no_grad():
            pre = {g: lg.clone() for g, (_, lg) in batch.forward(adapter).items()}
            objective = ODEditObjective(adapter, batch, params, cfg.odedit, seed=0)
            params[0].add_(0.02 * torch.randn(params[0].shape, generator=torch.Generator().manual_seed(1)))
            want, fit = _reference_risks(adapter, batch, pre, cfg.odedit)
            total, stats = objective()
        assert set(want) == {"IN", "SE", "OUT"} and want["OUT"] > 0
        for kind, value in want.items():
            assert stats[f"risk_{kind.lower()}"] == pytest.approx(value, rel=1e-4, abs=1e-6), kind
        assert total.item() == pytest.approx(sum(want.values()), rel=1e-4)
        assert stats["fit"] == pytest.approx(fit, rel=1e-4)
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


def test_cached_layer_insides_give_the_same_risks_and_gradient(adapter, world, world_requests):
    """Caching the edited layer's attention output and its MLP keys, and running the top layer's
    MLP only where a loss reads, is a cost choice only: the risks, the TV penalty and the edit's
    gradient are those of the full forward; the frozen parts of the edited layer do not run."""
    root, requests = world_requests
    cfg = EditConfig.from_dict({"method": "odedit-ft-l", "odedit": {"env_samples": 0}})
    es = build_environments(requests[1], root, cfg.odedit, world.locality_pool(64, requests[1].subject), seed=0)
    editor = BASE_EDITORS["ft-l"](adapter, cfg.base)
    params = editor.begin()
    block, top = adapter.decoder_layers()[editor.layer], adapter.decoder_layers()[-1]
    assert editor.only_mlp_output and adapter.family.mlp_cache and top is not block
    calls = {"attention": 0, "gate": 0, "top_mlp_positions": []}
    hooks = [block.self_attn.register_forward_hook(lambda *a: calls.__setitem__("attention", calls["attention"] + 1)),
             block.mlp.gate_proj.register_forward_hook(lambda *a: calls.__setitem__("gate", calls["gate"] + 1)),
             top.mlp.gate_proj.register_forward_hook(lambda m, args, out: calls["top_mlp_positions"].append(out.shape[:-1].numel()))]
    try:
        with torch.no_grad():
            params[0].add_(0.02 * torch.randn(params[0].shape, generator=torch.Generator().manual_seed(2)))
        got = {}
        for inside in (False, True):
            batch = EnvBatch(adapter, es.train, prefix_layer=editor.layer, inside=inside)
            assert all((e.key is not None) == inside for e in batch.encoded.values())
            objective = ODEditObjective(adapter, batch, params, cfg.odedit, seed=0)
            objective.step_index = cfg.odedit.tv_warmup_steps
            calls.update(attention=0, gate=0, top_mlp_positions=[])
            params[0].grad = None
            loss, stats = objective()
            loss.backward()
            got[inside] = (loss.item(), stats, params[0].grad.clone(), {k: list(v) if isinstance(v, list) else v
                                                                   for k, v in calls.items()})
        (loss0, stats0, grad0, calls0), (loss1, stats1, grad1, calls1) = got[False], got[True]
        assert loss1 == pytest.approx(loss0, rel=1e-4)
        for k in stats0:
            assert stats1[k] == pytest.approx(stats0[k], rel=1e-4, abs=1e-6), k
        assert ((grad1 - grad0).norm() / grad0.norm()).item() < 1e-4
        assert calls0["attention"] == calls0["gate"] == len(batch.encoded) and calls1["attention"] == calls1["gate"] == 0
        read = sum(int(objective._layout(batch).read[g].sum()) for g in batch.encoded)
        positions = sum(e.labels.numel() for e in batch.encoded.values())
        # the top layer's MLP ran only where a loss reads, both times (it needs no cached insides)
        assert sum(calls1["top_mlp_positions"]) == sum(calls0["top_mlp_positions"]) == read < positions
    finally:
        for h in hooks:
            h.remove()
        editor.abort()


def test_objective_without_out_environments_takes_no_pre_edit_reference(adapter, world, world_requests):
    """The locality ablation (`[-loc]`: w_loc 0 and no OUT environments): no KL, no pre-edit
    forward at all; the other risks are still those of the environments one by one."""
    root, requests = world_requests
    cfg = EditConfig.from_dict({"method": "odedit-ft-l", "odedit": {"env_samples": 0, "tv": False, "w_loc": 0.0,
                                                                       "n_out_text": 0, "n_out_image": 0}})
    es = build_environments(requests[1], root, cfg.odedit, world.locality_pool(64, requests[1].subject), seed=0)
    editor = BASE_EDITORS["ft-l"](adapter, cfg.base)
    params = editor.begin()
    try:
        batch = EnvBatch(adapter, es.train, prefix_layer=editor.layer)
        objective = ODEditObjective(adapter, batch, params, cfg.odedit, seed=0)
        assert objective._pre_table is None
        with torch.no_grad():
            want, fit = _reference_risks(adapter, batch, None, cfg.odedit)
            total, stats = objective()
        assert "OUT" not in want and "risk_out" not in stats
        for kind, value in want.items():
            assert stats[f"risk_{kind.lower()}"] == pytest.approx(value, rel=1e-4, abs=1e-6), kind
        assert stats["fit"] == pytest.approx(fit, rel=1e-4)
    finally:
        editor.abort()
