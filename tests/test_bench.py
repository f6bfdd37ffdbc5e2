"""odedit bench: grid definitions, method names, and a tiny grid (1 edit x 2 methods x 1 seed)
on the embedded model producing the table columns and a report with a PNG."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from odedit.bench import grid as G
from odedit.bench import measure, report


@pytest.fixture(autouse=True)
def one_thread():
    """The bench's own CPU default (1 thread: several times faster for the tiny model on a
    shared 2-core box); restored afterwards for the rest of the suite."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_and_full_grids_have_spreads():
    for g in (G.QUICK, G.FULL):
        assert len(g.seeds) >= 3, g.name
        assert set(G.BASE_METHODS) <= set(g.methods)
        assert all(s.method for s in g.specs)  # every name parses
    assert set(G.FULL.ts) == {1, 5, 10, 20} and 5 in G.QUICK.ts and G.QUICK.n_single >= 1
    assert set(G.ABLATION_METHODS) <= set(G.FULL.methods)


def test_method_names_and_ablations():
    spec = G.parse_method("odedit-ft-l[-tv]")
    assert spec.method == "odedit-ft-l" and spec.config(3).odedit.tv is False and spec.config(3).seed == 3
    cfg = G.parse_method("odedit-lora[-gen,-loc]").config(0)
    assert cfg.method == "odedit-lora" and cfg.odedit.w_gen == 0 and cfg.odedit.w_loc == 0
    assert cfg.odedit.n_out_text == 0 and cfg.odedit.n_out_image == 0
    assert G.parse_method("ft-l").config(0).odedit.tv is True  # defaults untouched
    assert G.parse_method("icl").is_icl
    for bad in ("rome", "ft-l[-tv]", "odedit-ft-l[-nope]"):
        with pytest.raises(ValueError):
            G.parse_method(bad)


def test_cli_rejects_unknown_method_before_loading_a_model(tmp_path):
    from odedit.cli import app

    res = CliRunner().invoke(app, ["bench", "--grid", "tiny", "--methods", "ft-l,rome", "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output


def test_summary_mean_and_std_over_seeds():
    rows = [measure.Row("m", s, "single", 1, 1, 1, reliability=r, seconds_per_edit=t)
            for s, (r, t) in enumerate([(1.0, 1.0), (0.5, 2.0), (0.0, 3.0)])]
    (e,) = report.summarise(rows)
    assert e["seeds"] == 3 and e["reliability"] == pytest.approx(0.5) and e["reliability_std"] == pytest.approx(0.5)
    assert e["seconds_per_edit"] == pytest.approx(2.0) and e["t_generality"] is None
    assert report.fmt(e, "reliability") == "50.0±50.0"


def test_tiny_grid_on_embedded_model(adapter, embedded_dir, world, tmp_path):
    from odedit.pools import locality_pool_for

    grid = G.TINY
    assert grid.methods == ("ft-l", "odedit-ft-l") and grid.seeds == (0,) and grid.n_single == 1
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    rows = measure.run_grid(
        adapter, grid,
        lambda seed: measure.load_requests(grid.n_requests, seed, tmp_path / "images", world=world),
        lambda seed, reqs, root: locality_pool_for(adapter, embedded_dir, reqs, root, seed=seed))
    for k, v in adapter.model.state_dict().items():  # single edits leave the model as it was
        assert (v == before[k]).all(), k
    assert [(r.method, r.mode, r.T) for r in rows] == [("ft-l", "single", 1), ("odedit-ft-l", "single", 1)]
    for r in rows:
        assert r.ok == 1 and r.reliability is not None and r.seconds_per_edit > 0 and r.steps >= 1
        assert r.delta_kb > 0 and r.peak_mem_mb is not None

    summary = report.summarise(rows)
    header, body = report.table_rows(summary)
    assert header == ["method", "setting", "seeds", "Rel", "T-Gen", "M-Gen", "T-Loc@answer", "M-Loc@answer",
                      "T-Loc@easyedit", "M-Loc@easyedit", "Retention", "s/edit", "steps", "peak MB", "delta KB"]
    assert all(r.t_locality_easyedit is not None and r.m_locality_easyedit is not None for r in rows)
    assert len(body) == 2 and all(len(r) == len(header) for r in body)
    assert report.rich_table(summary).row_count == 2

    paths = report.write_report(tmp_path / "out", rows, {"grid": "tiny"})
    pngs = list((tmp_path / "out").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "| ft-l | single |" in paths["md"].read_text()
    assert "data:image/png;base64" in paths["html"].read_text()
    assert len(json.loads(paths["rows"].read_text())) == 2


def test_sequential_rows_restore_the_model(adapter, embedded_dir, world, tmp_path):
    """One sequential run scored at T=1 and T=2 (retention = reliability after T), then undone."""
    from odedit.pools import locality_pool_for

    grid = G.Grid("t", ("ft-l",), (0,), n_single=0, ts=(1, 2))
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    reqs, root = measure.load_requests(2, 0, tmp_path / "images", world=world)
    pool = locality_pool_for(adapter, embedded_dir, reqs, root, seed=0)
    rows = measure.run_method(adapter, grid.specs[0], 0, reqs, root, pool, grid)
    assert [(r.mode, r.T) for r in rows] == [("sequential", 1), ("sequential", 2)]
    assert all(r.retention == r.reliability for r in rows)
    for k, v in adapter.model.state_dict().items():
        assert (v == before[k]).all(), k


def test_lifelong_scorer_on_an_unedited_champion(adapter, world, tmp_path):
    """The lifelong measures on a champion that did not change: nothing is retained (the edits
    never landed in the weights), nothing regressed, locality is perfect; rows, summary, table
    and plot come out."""
    from odedit.bench import lifelong as L
    from odedit.lifecycle.gate import world_probes

    probes = world_probes(world, tmp_path / "probes")[:8]

    def step(batch, root, k):  # a gate that passes but a champion that stays the base model
        return True, [], 0.0, adapter, {r.id for r in batch}

    rows = L.run_lifelong("none", 0, step, adapter, world, probes, tmp_path / "probes", tmp_path / "img",
                          n_batches=2, batch_size=2)
    assert [r.live for r in rows] == [2, 4] and all(r.gate == "passed" for r in rows)
    last = rows[-1]
    assert last.retention == 0.0 and last.regression == 0.0 and last.t_loc == 1.0 and last.m_loc == 1.0
    summary = L.summarise(rows)
    assert "| none | 4 |" in L.markdown(summary, last_only=True)
    assert L.plot(summary, tmp_path / "p.png").stat().st_size > 0


def test_perf_reports_each_cost_target_per_odedit_variant(adapter, world, tmp_path):
    """`bench --perf`'s measurements and verdict: per ODEdit variant the per-edit ratio, the step
    against a bare FT-L step on as many rows as that variant's step takes, and memory."""
    from odedit.cli.bench import _perf_verdict

    reqs = world.demo_requests(1, tmp_path, seed=0)
    pool = world.locality_pool(64, reqs[0].subject)
    res = measure.perf(adapter, reqs, tmp_path, pool, methods=("ft-l", "odedit-ft-l", "odedit-ft-l[+all]"),
                       fixed_steps=3, repeats=1)
    by = {r.method: r for r in res}
    assert by["odedit-ft-l"].samples < by["odedit-ft-l[+all]"].samples  # stochastic environments: fewer rows
    for name in ("odedit-ft-l", "odedit-ft-l[+all]"):
        assert by[name].extra["same_batch_samples"] == by[name].samples  # the bare step runs as many rows
    text = _perf_verdict(res)
    for name in ("odedit-ft-l", "odedit-ft-l[+all]"):
        for target in ("(a) per edit", "(b) step", "(c) edit / plain forward"):
            assert f"{name}: {target}" in text


def test_perf_batch_timing_reads_the_lifecycle_benchmark(tmp_path, monkeypatch):
    """`bench --perf --batch-edits N` runs bench/bench_lifecycle.py (its own process, default
    gate) and turns what it wrote into the (e) verdict line."""
    import json
    import subprocess

    from odedit.cli import bench as cli_bench

    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        out = cmd[cmd.index("--json") + 1]
        json.dump({"wall_s": 201.4, "method": "odedit-ft-l-lifelong", "status": "registered",
                   "rows": [{"phase": "edit optimisation (optimise_edit, sum of per-edit seconds)",
                             "seconds": 150.0}]}, open(out, "w"))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    line, got = cli_bench._time_batch(100, None, tmp_path)
    assert seen["cmd"][1].endswith("bench/bench_lifecycle.py")
    assert seen["cmd"][2:6] == ["--edits", "100", "--deployment", "default"]
    assert "201 s wall, optimisation 150 s; target <= 180 s: NOT met" in line
    assert got["wall_s"] == 201.4 and got["optimisation_s"] == 150.0
