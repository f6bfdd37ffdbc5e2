"""The benchmark's stress splits and its paired verdict: probes are built from the world (never
from a training environment), move the right way when an edit lands, and a claim needs every
seed to agree by more than the seed spread."""

import pytest

from odedit.bench import grid as G
from odedit.bench import stress
from odedit.bench.measure import Row
from odedit.bench.report import paired
from odedit.config import EditConfig
from odedit.editing import run_edits
from odedit.environments import build_environments, image_hash, norm_text


@pytest.fixture(autouse=True)
def restore_model(adapter):
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    yield
    adapter.model.load_state_dict(state)


def test_stress_probes_move_with_an_edit_and_never_train(adapter, world, world_requests):
    root, requests = world_requests
    req = requests[0]
    probes = stress.build(world, adapter, req, root, seed=0)
    assert probes is not None and all(probes.gen[s] for s in ("g_heavy_aug", "g_style", "g_phrasings"))
    assert probes.loc["l_same_subject"] and probes.loc["l_nuisance_twin"]
    before = stress.score(adapter, probes)
    assert all(before[s] == 1.0 for s in stress.LOC_SPLITS if before[s] is not None)  # unedited = itself
    # no stress probe is in a training environment (text, or image by content)
    env = build_environments(req, root, EditConfig().odedit, world.locality_pool(64, req.subject), seed=0)
    train = [s for e in env.train for s in e.samples]
    train_images = {image_hash(s.image) for s in train if s.image is not None}
    for split, samples in {**probes.gen, **probes.loc}.items():
        for s in samples:
            if split in ("g_phrasings", "portability"):
                assert norm_text(s.prompt) not in {norm_text(t.prompt) for t in train}, split
            if split in ("g_heavy_aug", "g_style", "l_lookalike", "l_nuisance_twin") and s.image is not None:
                assert image_hash(s.image) not in train_images, split
    cfg = EditConfig.from_dict({"method": "odedit-ft-l", "seed": 0})
    run = run_edits(adapter, [req], root, cfg, lambda r: world.locality_pool(64, r.subject, seed=0), sequential=True)
    assert run.records[0].status == "ok"
    after = stress.score(adapter, probes)
    assert after["g_phrasings"] > before["g_phrasings"]
    assert after["g_heavy_aug"] >= before["g_heavy_aug"]


def _row(method, seed, value):
    return Row(method, seed, "single", 1, 1, 1, reliability=value, stress={"g_style": value})


def test_paired_verdict_needs_every_seed_beyond_the_spread():
    rows = [_row("a", s, v) for s, v in enumerate((0.9, 0.8, 0.85))] + \
           [_row("b", s, v) for s, v in enumerate((0.7, 0.6, 0.66))]
    assert paired(rows, "a", "b", "single", 1, "reliability")["verdict"] == "better"
    assert paired(rows, "b", "a", "single", 1, "stress.g_style")["verdict"] == "worse"
    mixed = [_row("a", s, v) for s, v in enumerate((0.9, 0.5, 0.85))] + \
            [_row("b", s, v) for s, v in enumerate((0.7, 0.6, 0.66))]
    assert paired(mixed, "a", "b", "single", 1, "reliability")["verdict"] == "no difference beyond the seed spread"
    one = [_row("a", 0, 0.9), _row("b", 0, 0.1)]
    assert paired(one, "a", "b", "single", 1, "reliability")["verdict"] == "one seed: no verdict"


def test_full_grid_has_the_control_and_the_dual_ablation():
    names = G.FULL.methods
    assert "odedit-ft-l[-gen,-loc,-tv]" in names and "odedit-ft-l[+dual]" in names
    ctrl = G.parse_method("odedit-ft-l[-gen,-loc,-tv]").config(0)
    assert (ctrl.odedit.w_gen, ctrl.odedit.w_loc, ctrl.odedit.n_out_text, ctrl.odedit.tv) == (0.0, 0.0, 0, False)
    assert ctrl.odedit.w_se_nll > 0  # the control keeps ODEdit's data: target NLL on SE
    assert G.parse_method("odedit-ft-l[+dual]").config(0).odedit.dual is True
    assert G.parse_method("odedit-ft-l[-dual]").config(0).odedit.dual is False
