"""`odedit bench`: ODEdit against its base editors (single and sequential), with speed and
memory; `--perf` measures the editor itself (step time ratio, edit time, memory, profile)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Optional

import typer

from odedit.cli import app
from odedit.cli.render import console


def _ints(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    return tuple(int(x) for x in text.replace(" ", "").split(",") if x)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="The quick grid (< 5 min on 2 CPU cores)."),
    grid_name: str = typer.Option("full", "--grid", help="Named grid: quick, full, tiny."),
    perf: bool = typer.Option(False, "--perf", help="Editor performance only: ODEdit/FT-L step time ratio, "
                              "seconds per edit, peak memory vs a forward pass, profile of one edit."),
    lifelong: bool = typer.Option(False, "--lifelong", help="Lifelong editing: --batches x --batch-size world "
                                  "edits through run-batch's computing path (edit the champion, gate the final "
                                  "model, promote on pass), scored on the served champion after every batch."),
    batches: int = typer.Option(5, "--batches", help="--lifelong: number of batches."),
    batch_size: int = typer.Option(20, "--batch-size", help="--lifelong: edits per batch."),
    batch_edits: int = typer.Option(0, "--batch-edits", help="--perf: also time an N-edit batch through the "
                                    "edit-batch flow end to end (bench/bench_lifecycle.py: default method and "
                                    "gate, a temporary MLflow + Prefect state), e.g. 100 (~8 min on 2 CPU cores); "
                                    "0 = skip."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="--lifelong: gate section of "
                                             "configs/gate.yaml (default: the default gate; 'demo' is permissive)."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated methods, e.g. "
                                          "'ft-l,odedit-ft-l,odedit-ft-l[-tv],icl' (overrides the grid's; "
                                          "with --perf, the editors timed, e.g. 'ft-l,odedit-ft-l,odedit-ft-l[+all]')."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (overrides the grid's)."),
    n_single: Optional[int] = typer.Option(None, "--n-single", help="Single edits per seed."),
    ts: Optional[str] = typer.Option(None, "--ts", help="Sequential lengths, e.g. '1,5,10,20'; '' for none."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory or hub id (Auto classes); "
                                        "default: the embedded tiny LLaVA."),
    data: Optional[Path] = typer.Option(None, "--data", exists=True, dir_okay=False,
                                        help="MMEdit-format JSON (or JSONL / batch file) of edits."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Directory image paths in --data "
                                              "are relative to (default: the data file's directory)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Base EditConfig as JSON."),
    out: Path = typer.Option(Path("out/bench"), "--out", "-o", help="Output directory of the report."),
    mlflow: bool = typer.Option(False, "--mlflow", help="Log the report as artifacts of an MLflow run "
                                "(MLFLOW_TRACKING_URI, else sqlite:///$ODEDIT_STATE_DIR/mlflow.db)."),
    device: Optional[str] = typer.Option(None, help="cpu / cuda (default: cuda when available)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads. Default on CPU: 1 (faster for "
                                          "small models on few cores, and not derailed by other jobs; "
                                          "see bench/README.md); 0 = torch's default."),
):
    """Run a grid of methods (ft-l, lora, odedit-*, ablations like odedit-ft-l[-tv], icl) over
    edits, single and sequential; print a table (mean ± std over seeds) and write
    OUT/report.md, OUT/report.html with plots."""
    import torch

    from odedit.bench import grid as G
    from odedit.bench import measure, report
    from odedit.config import EditConfig
    from odedit.pools import locality_pool_for, world_of

    if threads is None:  # decided after the device is known (below)
        pass
    elif threads > 0:
        torch.set_num_threads(threads)
    name = "quick" if quick else grid_name
    if name not in G.GRIDS:
        raise typer.BadParameter(f"unknown grid {name!r}; choose one of {', '.join(G.GRIDS)}", param_hint="--grid")
    grid = G.GRIDS[name]
    try:
        if methods:
            grid = grid.with_(methods=tuple(m.strip() for m in _split_methods(methods)))
            grid.specs  # validate
        if seeds is not None:
            grid = grid.with_(seeds=_ints(seeds))
        if n_single is not None:
            grid = grid.with_(n_single=n_single)
        if ts is not None:
            grid = grid.with_(ts=_ints(ts) or ())
    except ValueError as exc:
        console.print(f"[red]error[/] {exc}")
        raise typer.Exit(2)
    base = EditConfig.from_dict(json.loads(config_file.read_text())) if config_file else None

    from odedit.cli.edit import _load_model

    ref, adapter = _load_model(model, device)
    if threads is None and adapter.device.type == "cpu":
        torch.set_num_threads(1)
    world = world_of(ref) if data is None and Path(str(ref)).is_dir() else None
    if data is None and world is None:
        console.print("[red]error[/] this model has no world to generate edits from: pass --data FILE")
        raise typer.Exit(2)
    root = image_root or (data.parent if data else out / "images")

    def requests_for_seed(seed: int, n: int | None = None):
        return measure.load_requests(n or grid.n_requests, seed, root, data=data, world=world)

    def pool_for(seed, requests, req_root):
        return locality_pool_for(adapter, ref, requests, req_root, seed=seed)

    meta = {"grid": name if not perf else "perf", "model": str(ref), "device": str(adapter.device),
            "torch_threads": torch.get_num_threads(), "data": str(data) if data else "world demo requests",
            "host": f"{platform.node()} {platform.processor() or platform.machine()}"}
    try:
        import os

        meta["load_avg_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    t0 = time.perf_counter()
    if perf:
        reqs, req_root = requests_for_seed(0, 3)
        pool = pool_for(0, reqs, req_root)
        perf_methods = tuple(_split_methods(methods)) if methods else ("ft-l", "odedit-ft-l")
        with console.status(f"measuring editor performance ({', '.join(perf_methods)}; 20 fixed steps x 3 edits)"):
            results = measure.perf(adapter, reqs, req_root, pool, methods=perf_methods, base=base)
        _wide().print(report.perf_table(results))
        with console.status("profiling one odedit-ft-l edit"):
            prof = measure.profile_edit(adapter, reqs[0], req_root, pool, base=base)
        console.print(f"[bold]one odedit-ft-l edit[/]: {prof['edit_s']:.2f} s, {prof['steps']} steps, "
                      f"setup {prof['setup_s']:.2f} s")
        console.print("[bold]torch.profiler top operators (self time)[/]")
        _wide().print(prof["torch_ops"], markup=False, highlight=False)
        console.print("[bold]cProfile top functions (own time)[/]")
        _wide().print(prof["cprofile_tottime"], markup=False, highlight=False)
        import tempfile

        from odedit.bench.grid import parse_method
        from odedit.pools import preservation_of

        seq_reqs, seq_root = requests_for_seed(1, 6)
        methods_seq = ("odedit-ft-l", "odedit-ft-l[+all]", "odedit-ft-l-lifelong", "odedit-ft-l-lifelong")
        lifelong_cfg = parse_method("odedit-ft-l-lifelong").config(0, base)
        with console.status("per-edit seconds of a sequential 6-edit batch: odedit-ft-l, [+all], the lifelong "
                            "default (cold, then warm key cache)"), tempfile.TemporaryDirectory() as cache:
            per_edit = measure.sequential_seconds_per_edit(
                adapter, seq_reqs, seq_root, pool_for(1, seq_reqs, seq_root),
                preservation_of(adapter, ref, seq_reqs, seq_root, lifelong_cfg), methods_seq, base, Path(cache))
        meta["sequential_s_per_edit"] = {k: round(v, 3) for k, v in per_edit.items()}
        meta["wall_s"] = round(time.perf_counter() - t0, 1)
        notes = _perf_verdict(results)
        ref_s = per_edit["odedit-ft-l[+all]"]  # odedit-ft-l as the Lifelong issue found it: every row a step
        for key in ("odedit-ft-l-lifelong", "odedit-ft-l-lifelong (warm)"):
            ratio = per_edit[key] / ref_s
            notes += (f"\n(d) per edit in a sequential 6-edit batch (environments, baselines, optimisation, scoring; "
                      f"lifelong: key bank + projector): {key} {per_edit[key]:.2f} s vs odedit-ft-l[+all] "
                      f"{ref_s:.2f} s = {ratio:.2f}x (odedit-ft-l, stochastic environments: "
                      f"{per_edit['odedit-ft-l']:.2f} s); target <= 2x: {'met' if ratio <= 2 else 'NOT met'}")
        if batch_edits > 0:
            line, meta["batch"] = _time_batch(batch_edits, model, out)
            notes += "\n" + line
            meta["wall_s"] = round(time.perf_counter() - t0, 1)
        console.print(notes)
        _finish(out, [], meta, results, prof, mlflow, notes)
        return

    if lifelong:
        _lifelong(ref, adapter, world, methods, seeds, batches, batch_size, base, out, meta, t0, mlflow, deployment)
        return

    meta.update(methods=",".join(grid.methods), seeds=",".join(map(str, grid.seeds)), n_single=grid.n_single,
                ts=",".join(map(str, grid.ts)))
    console.print(f"grid [bold]{name}[/]: {len(grid.methods)} method(s) x {len(grid.seeds)} seed(s); "
                  f"{grid.n_single} single edit(s) + sequential T in {list(grid.ts)} per cell; model {ref} "
                  f"on {adapter.device}")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = grid.edits_per_cell() * len(grid.specs) * len(grid.seeds)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "rows.partial.jsonl"  # rows as they come (follow a long grid with tail -f)
    partial.write_text("")
    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as progress:
        task = progress.add_task("", total=total)
        rows = measure.run_grid(
            adapter, grid, requests_for_seed, pool_for, base,
            on_edit=lambda: progress.update(task, advance=1),
            on_cell=lambda m, s: progress.update(task, description=f"{m} seed {s}"),
            on_rows=lambda new: _append_partial(partial, new, t0), world=world if data is None else None)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    _wide().print(report.rich_table(report.summarise(rows), title=f"odedit bench ({name})"))
    console.print(f"grid wall time {meta['wall_s']:.0f} s")
    _finish(out, rows, meta, None, None, mlflow)


LIFELONG_METHODS = "ft-l,odedit-ft-l,odedit-ft-l-lifelong"


def _lifelong(ref, adapter, world, methods, seeds, batches, batch_size, base, out: Path, meta: dict, t0: float,
              use_mlflow: bool, deployment: str | None = None) -> None:
    """`odedit bench --lifelong`: see odedit/bench/lifelong.py."""
    from odedit.bench import lifelong as L
    from odedit.bench.grid import parse_method
    from odedit.lifecycle import gate
    from odedit.lifecycle.batch import default_probes

    if world is None:
        console.print("[red]error[/] --lifelong needs a world model (the embedded one or one made by "
                      "`python -m odedit.models.embedded`)")
        raise typer.Exit(2)
    specs = [parse_method(m) for m in _split_methods(methods or LIFELONG_METHODS)]
    seed_list = _ints(seeds) if seeds else (0, 1, 2)
    out.mkdir(parents=True, exist_ok=True)
    probes = default_probes(ref, out / "probes")
    gate_cfg = gate.load_gate_config(None, deployment)
    meta.update(grid="lifelong", gate=deployment or "default", methods=",".join(s.name for s in specs), seeds=",".join(map(str, seed_list)),
                batches=batches, batch_size=batch_size, probes=len(probes), protocols=L.PROTOCOLS)
    console.print(f"lifelong: {len(specs)} method(s) x {len(seed_list)} seed(s) x {batches} batch(es) of "
                  f"{batch_size} edits, gate {deployment or 'default'}; model {ref} on {adapter.device}")
    rows: list = []
    partial = out / "rows.partial.jsonl"
    partial.write_text("")
    for seed in seed_list:
        for spec in specs:
            cfg = spec.config(seed, base)
            step = L.registry_step(str(ref), cfg, probes, out / "probes", gate_cfg, out / "work" / f"{spec.name}-{seed}",
                                   device=str(adapter.device))

            def show(row):
                def pct(v):
                    return "-" if v is None else f"{100 * v:.1f}"
                console.print(f"  {row.method} seed {row.seed} batch {row.batch}: gate {row.gate}, live {row.live}, "
                              f"retention {pct(row.retention)}, regression {pct(row.regression)}, "
                              f"M-Gen {pct(row.m_gen)}, T-Loc {pct(row.t_loc)}, "
                              f"{row.seconds_per_edit:.2f} s/edit" + (f"; gate: {row.gate_reasons[0]}"
                                                                      if row.gate_reasons else ""), markup=False)
                _append_partial(partial, [row], t0)

            rows += L.run_lifelong(spec.name, seed, step, adapter, world, probes, out / "probes", out / "images",
                                   batches, batch_size, on_row=show)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    summary = L.summarise(rows)
    L.write_rows(out / "lifelong.json", rows)
    L.plot(summary, out / "lifelong.png")
    text = (f"# odedit bench --lifelong\n\n{json.dumps({k: v for k, v in meta.items() if k != 'protocols'})}\n\n"
            f"## After the last batch\n\n{L.markdown(summary, last_only=True)}\n\n## Every batch\n\n"
            f"{L.markdown(summary)}\n\n## Protocols\n\n" +
            "\n".join(f"- {k}: {v}" for k, v in L.PROTOCOLS.items()) + "\n\n![lifelong](lifelong.png)\n")
    (out / "report.md").write_text(text)
    console.print(L.markdown(summary, last_only=True), markup=False, highlight=False)
    console.print(f"report: [bold]{out / 'report.md'}[/], plot {out / 'lifelong.png'} ({meta['wall_s']:.0f} s)")
    if use_mlflow:
        from odedit.bench import report

        run_id = report.log_mlflow(out, meta, [], None)
        console.print(f"logged to MLflow ({report.tracking_uri()}), run {run_id}")


def _append_partial(path: Path, rows, t0: float) -> None:
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps({**r.to_dict(), "elapsed_s": round(time.perf_counter() - t0, 1)}) + "\n")


def _wide():
    """The shared console, or a wide one when output is not a terminal (tables stay readable in logs)."""
    from rich.console import Console

    return console if console.is_terminal else Console(width=200)


def _split_methods(text: str) -> list[str]:
    """Split on commas outside brackets: 'a,odedit-ft-l[-tv,-gen]' -> ['a', 'odedit-ft-l[-tv,-gen]']."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _time_batch(n: int, model: Optional[str], out: Path, target_s: float = 180.0) -> tuple[str, dict]:
    """(e) of the Cost issue: an `n`-edit batch through the edit-batch flow end to end, timed by
    bench/bench_lifecycle.py in a process of its own (it sets up a temporary state directory and
    Prefect API, as a fresh deployment would); its verdict line and figures."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "bench" / "bench_lifecycle.py"
    if not script.is_file():
        return f"(e) {n}-edit batch: not timed ({script} is not there: it ships with the repository)", {}
    path = out / "batch.json"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(script), "--edits", str(n), "--deployment", "default", "--json", str(path)]
    if model:
        cmd += ["--model", model]
    console.print(f"timing a {n}-edit batch end to end: {' '.join(cmd[1:])}")
    if subprocess.run(cmd).returncode != 0 or not path.is_file():
        return f"(e) {n}-edit batch: the timing run failed (see its output above)", {}
    got = json.loads(path.read_text())
    opt = next((r["seconds"] for r in got.get("rows", []) if r["phase"].startswith("edit optimisation")), None)
    wall = got["wall_s"]
    line = (f"(e) {n}-edit batch, edit-batch flow end to end ({got.get('method')}, default gate, status "
            f"{got.get('status')}): {wall:.0f} s wall" + (f", optimisation {opt:.0f} s" if opt is not None else "")
            + f"; target <= {target_s:.0f} s: {'met' if wall <= target_s else 'NOT met'}")
    return line, {"edits": n, "wall_s": round(wall, 1), "optimisation_s": opt, "status": got.get("status"),
                  "json": str(path)}


def _perf_verdict(results) -> str:
    """The targets of the Cost issue, met or not, from the --perf measurements: per ODEdit
    variant, (a) seconds per edit vs ft-l, both with their own early stop (fitted target NLL <
    early_stop_loss: ODEdit on every IN + SE row, FT-L on IN), (b) its step vs a bare ft-l step
    on the same rows, timed alternately step by step (what ODEdit's terms add; the median of the
    per-step ratios), (c) edit vs plain forward peak tensor memory."""
    by = {r.method: r for r in results}
    ftl = by.get("ft-l")
    if not ftl:
        return ""
    lines = []
    for r in results:
        if not r.method.startswith("odedit-"):
            continue
        x = r.edit_s / ftl.edit_s
        same, n = r.extra.get("ftl_same_batch_step_ms"), r.extra.get("same_batch_samples")
        lines.append(f"{r.method}: (a) per edit {x:.2f}x ft-l ({r.edit_s:.2f} vs {ftl.edit_s:.2f} s; {r.edit_steps} vs "
                     f"{ftl.edit_steps} steps, {r.samples} vs {ftl.samples} rows a step), target <= 3x: "
                     f"{'met' if x <= 3 else 'NOT met'}")
        if same:
            y = r.extra["step_vs_bare"]
            lines.append(f"{r.method}: (b) step vs a bare ft-l step on the same {n} rows, paired step by step: "
                         f"{y:.2f}x (medians {r.extra['paired_step_ms']:.1f} vs {same:.1f} ms), target <= 1.1x: "
                         f"{'met' if y <= 1.1 else 'NOT met'}")
        lines.append(f"{r.method}: (c) edit / plain forward peak tensor memory {r.mem_ratio:.2f}x ({r.edit_mb:.1f} vs "
                     f"{r.forward_mb:.1f} MB), target <= 1.5x: {'met' if r.mem_ratio <= 1.5 else 'NOT met'}")
    return "\n".join(lines)


def _finish(out, rows, meta, perf, prof, use_mlflow, notes: str = ""):
    from odedit.bench import report

    paths = report.write_report(out, rows, meta, perf, prof, notes)
    console.print(f"report: [bold]{paths['md']}[/], [bold]{paths['html']}[/]")
    if use_mlflow:
        run_id = report.log_mlflow(out, meta, rows, perf)
        console.print(f"logged to MLflow ({report.tracking_uri()}), run {run_id}")
