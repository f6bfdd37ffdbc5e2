"""`odedit edit` (edit a model with a batch of requests) and `odedit demo` (the same on
requests generated from the embedded model's world)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from odedit.cli import app
from odedit.cli.render import console, edit_table
from odedit.config import METHODS, EditConfig
from schemas.ids import display_id, safe_id

MODEL_HELP = "Model directory or hub id (Auto classes); default: the embedded tiny LLaVA."


def _config(method: str, seed: int, steps: Optional[int], lr: Optional[float], layer: Optional[int],
            config_file: Optional[Path]) -> EditConfig:
    if method not in METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; choose one of {', '.join(METHODS)}",
                                 param_hint="--method")
    data = json.loads(config_file.read_text()) if config_file else {}
    data.update(method=method, seed=seed)
    cfg = EditConfig.from_dict(data)
    if steps is not None:
        cfg.base.steps = steps
    if lr is not None:
        cfg.base.lr = lr
    if layer is not None:
        cfg.base.layer = layer
    return cfg


def _load_model(model: Optional[str], device: Optional[str]):
    from odedit.models.adapter import MLLMAdapter, ModelLoadError

    ref = model or _default_model_ref()
    try:
        with console.status(escape(f"loading model {ref}")):
            return ref, MLLMAdapter.load(ref, device=device)
    except (ModelLoadError, ValueError) as exc:
        console.print(f"[red]error[/] --model: {escape(str(exc))}")
        raise typer.Exit(2)


def delta_path(out: Path, request_id: str) -> Path:
    """Where the delta of `request_id` goes: `OUT/deltas/<safe name>`, never outside OUT.
    A valid id (schemas/ids.py) is its own name; anything else (validation rejects it, this is
    defence in depth) becomes a sanitised prefix + hash. Raises ValueError if the resolved
    path would still leave OUT/deltas (e.g. OUT/deltas is a symlink pointing elsewhere)."""
    base = (Path(out) / "deltas").resolve()
    dest = (base / safe_id(request_id)).resolve()
    if dest.parent != base or not dest.is_relative_to(Path(out).resolve()):
        raise ValueError(f"delta path for request {display_id(request_id)} leaves {out}: {dest}")
    return dest


def execute(requests, image_root, ref: str, adapter, cfg: EditConfig, sequential: bool, out: Path):
    """Run the edits with a progress bar, print the table, save deltas and edits.json."""
    from odedit.editing import run_edits
    from odedit.pools import locality_pool_for

    console.print(f"model [bold]{escape(str(ref))}[/] on {adapter.device}; method [bold]{escape(cfg.method)}[/]; "
                  f"{len(requests)} request(s), {'sequential' if sequential else 'single'} editing")
    pool = locality_pool_for(adapter, ref, requests, image_root, seed=cfg.seed)
    with Progress(TextColumn("[bold]editing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as progress:
        task = progress.add_task("", total=len(requests))

        def advance(record):
            progress.update(task, advance=1, description=escape(f"{record.request_id}: {record.status}"))

        run = run_edits(adapter, requests, image_root, cfg, pool, sequential=sequential, on_record=advance)
    console.print(edit_table(run))
    out.mkdir(parents=True, exist_ok=True)
    for rid, delta in run.deltas.items():
        delta.save(delta_path(out, rid))
    (out / "edits.json").write_text(json.dumps(
        {"model": ref, "config": cfg.to_dict(), "sequential": sequential, "summary": run.summary(),
         "records": [r.to_dict() for r in run.records]}, indent=2, default=str))
    console.print(f"deltas and edits.json written to [bold]{escape(str(out))}[/]")
    return run


def _validated(path: Path, image_root: Path, model_ref: str, out: Path):
    """Requests that pass validation; each rejected row is printed with its id, field and reason
    and kept in OUT/validation/quarantine.parquet (nothing is lost)."""
    from odedit.requests import BatchError, ValidationLimits, validate_batch

    try:
        limits = ValidationLimits.from_model(model_ref)
    except Exception:  # limits are a guard, not a reason to refuse the batch
        limits = ValidationLimits()
    try:
        result = validate_batch(path, [image_root], limits, out_dir=out / "validation")
    except BatchError as exc:
        console.print(f"[red]error[/] {escape(str(path))}: {escape(str(exc))}")
        raise typer.Exit(2)
    for rej in result.rejected:  # ids of rejected rows may be anything: repr'd and escaped
        console.print(f"[red]rejected[/] request {escape(display_id(rej.row_id))}, field {escape(str(rej.field))}: "
                      f"{escape(rej.reason)} - {escape(rej.message)}")
    if result.rejected:
        console.print(escape(f"{len(result.rejected)} rejected row(s) kept in "
                             f"{out / 'validation' / 'quarantine.parquet'}"))
    return result.accepted, result.rejected


def _default_model_ref() -> str:
    from odedit.models.embedded import default_model_path

    return str(default_model_path())


@app.command()
def edit(
    requests: Path = typer.Argument(..., exists=True, dir_okay=False,
                                    help="Edit requests: JSONL, Parquet or MMEdit JSON."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    method: str = typer.Option("odedit-ft-l", "--method", help=f"One of: {', '.join(METHODS)}."),
    image_root: Optional[Path] = typer.Option(None, help="Directory image paths are relative to "
                                              "(default: the requests file's directory)."),
    out: Path = typer.Option(Path("out/edit"), "--out", "-o", help="Output directory for deltas and edits.json."),
    sequential: bool = typer.Option(False, help="Apply edits one after another (T = number of requests)."),
    seed: int = typer.Option(0, help="Random seed."),
    steps: Optional[int] = typer.Option(None, help="Override optimisation steps per edit."),
    lr: Optional[float] = typer.Option(None, help="Override the learning rate."),
    layer: Optional[int] = typer.Option(None, help="Override the edited decoder layer."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="EditConfig as JSON (see odedit/config.py)."),
    device: Optional[str] = typer.Option(None, help="cpu / cuda (default: cuda when available)."),
):
    """Edit a model with a batch of requests; print Rel/T-Gen/M-Gen/T-Loc/M-Loc before -> after
    per edit, and write each edit's delta (only the changed tensors) to OUT/deltas/ID/.
    Exit 0: every request edited; 1: some rows rejected or some edits failed (each failure is
    recorded on its edit, the rest of the batch goes on); 2: the model or the batch cannot be
    used at all."""
    cfg = _config(method, seed, steps, lr, layer, config_file)
    root = image_root or requests.parent
    ref, adapter = _load_model(model, device)  # a bad --model fails before any work
    good, bad = _validated(requests, root, ref, out)
    if not good:
        console.print("[red]error[/]: no valid request to edit")
        raise typer.Exit(2)
    run = execute(good, root, ref, adapter, cfg, sequential, out)
    errors = [r for r in run.records if r.status == "error"]
    for rec in errors:  # the first line of each error; the whole message is in edits.json
        console.print(f"[red]error[/] request {escape(display_id(rec.request_id))}: "
                      f"{escape((rec.error or '').splitlines()[0] if rec.error else 'failed')}")
    if errors:
        console.print(escape(f"{len(errors)} of {len(run.records)} edit(s) failed (details in {out / 'edits.json'})"))
    if bad or errors:
        raise typer.Exit(1)


@app.command()
def demo(
    n: int = typer.Option(8, "--n", help="Number of world edits to generate and apply."),
    method: str = typer.Option("odedit-ft-l", "--method", help=f"One of: {', '.join(METHODS)}."),
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output directory."),
    seed: int = typer.Option(0, help="Seed of the generated requests and of the edits."),
):
    """The main job on the embedded default: generate N edit requests from the embedded
    model's world and edit the model with them. OUT is a batch folder (OUT/requests.jsonl +
    OUT/images/, valid for `odedit validate` / `run-batch` / an inbox as it is); the results
    (edits.json, deltas/) go to OUT/results/."""
    from odedit.models.embedded import default_model_path
    from odedit.pools import world_of

    world = world_of(default_model_path())
    t0 = time.perf_counter()
    reqs = [r.with_image_prefix("images") for r in world.demo_requests(n, out / "images", seed=seed)]
    # OUT is a batch folder: requests.jsonl + images/ with paths relative to OUT, so the file is
    # valid for `odedit validate` / `run-batch` as it is, and the folder can be dropped in an inbox
    (out / "requests.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in reqs))
    console.print(f"generated {n} world edit request(s) -> {out / 'requests.jsonl'} "
                  f"({time.perf_counter() - t0:.1f}s)")
    ref, adapter = _load_model(None, None)
    execute(reqs, out, ref, adapter, _config(method, seed, None, None, None, None), False, out / "results")
