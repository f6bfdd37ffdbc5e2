"""Lifecycle commands: `odedit run-batch`, `promote`, `rollback`, `history`, `show`,
`registry init`. Each calls a Prefect flow (ephemeral API unless PREFECT_API_URL is set) or
reads the MLflow registry through `odedit.registry`. State lives in $ODEDIT_STATE_DIR."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from odedit.cli import app
from odedit.cli.render import console
from odedit.config import LIFECYCLE_METHOD, METHODS
from odedit.lifecycle import state

NAME_HELP = "Registered model name."
URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under $ODEDIT_STATE_DIR)."
ACTOR_HELP = "Who does this, for the audit trail (default: $ODEDIT_ACTOR, else the login user@host marked '(login)')."

registry_app = typer.Typer(help="Registered models: bootstrap the first champion.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


def _env(tracking_uri: Optional[str]) -> None:
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    state.configure_environment()
    from odedit import registry
    from odedit.lifecycle import reap

    cleaned = reap.reap(state)  # an orphaned Prefect server, old scratch dirs, key-cache entries long unused
    if cleaned["servers"] or cleaned["work_dirs"]:
        console.print(f"cleaned up after an earlier killed run: Prefect server pid(s) {cleaned['servers'] or '-'}; "
                      f"{len(cleaned['work_dirs'])} stale work dir(s)", markup=False)
    if cleaned["key_files"]:
        console.print(f"removed {len(cleaned['key_files'])} key-cache file(s) unused for "
                      f"{reap.KEY_CACHE_MAX_AGE_S // 86400} days", markup=False)
    registry.probe(registry.connect())  # fail fast (bounded) before any flow starts: nothing changes


def _unreachable(fn):
    """A command whose registry cannot be read prints ONE line and exits 2 (no traceback):
    `registry unreachable at URI: ...; nothing changed`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from odedit.integrity import IntegrityError
        from odedit.registry import RegistryError, RegistryUnavailable

        try:
            return fn(*args, **kwargs)
        except RegistryUnavailable as exc:
            print(f"registry unreachable at {exc.uri}: {exc.cause}; nothing changed")
            raise typer.Exit(2)
        except IntegrityError as exc:  # a tampered / corrupt version: one line, non-zero
            print(f"IntegrityError: {exc}; nothing changed")
            raise typer.Exit(1)
        except RegistryError as exc:  # a definite registry state odedit refuses to build on
            print(f"refused: {exc}")
            raise typer.Exit(1)
    return wrapper


@app.command("run-batch")
@_unreachable
def run_batch(
    source: Path = typer.Argument(..., exists=True, help="A request file (JSONL/Parquet/JSON) or an inbox directory to drain."),
    name: str = typer.Option(state.DEFAULT_MODEL_NAME, "--name", help=NAME_HELP),
    method: str = typer.Option(LIFECYCLE_METHOD, "--method", help=f"One of: {', '.join(METHODS)}."),
    gate_config: Optional[Path] = typer.Option(None, "--gate-config", help="Gate thresholds (YAML/TOML/JSON; default configs/gate.yaml)."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="Section of the gate config to apply."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model when NAME is new (default: the embedded model)."),
    steps: Optional[int] = typer.Option(None, help="Override optimisation steps per edit."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=URI_HELP),
    settle: Optional[float] = typer.Option(None, "--settle", help="Directory only: seconds a file without a "
                                           "NAME.ready marker must be unchanged (default $ODEDIT_INBOX_SETTLE_S or 30)."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Where the requests' image paths are "
                                              "relative to (default: the request file's folder; for a directory: "
                                              "flat files only, a batch folder always uses itself)."),
):
    """Validate -> build environments -> edit the champion -> gate -> register a `candidate`.
    Requests already registered are skipped; a directory is drained like the scheduled inbox."""
    _env(tracking_uri)
    gc = str(gate_config) if gate_config else None
    if source.is_dir():
        from flows.inbox_drain import inbox_drain

        results = inbox_drain(str(source), name=name, method=method, gate_config=gc, deployment=deployment,
                              model=model, steps=steps, settle_s=settle,
                              image_root=str(image_root) if image_root else None)
    else:
        from flows.edit_batch import edit_batch

        results = [edit_batch(str(source), name=name, method=method, gate_config=gc, deployment=deployment,
                              model=model, steps=steps, image_root=str(image_root) if image_root else None)]
    for r in results:
        g = r.get("gate") or {}
        line = (f"{r['status']}; version {r.get('version') or '-'}; run {r.get('run_id') or '-'}; "
                f"skipped {len(r.get('skipped', []))}; pending {len(r.get('pending', []))}")
        if r.get("reason"):
            line += f"; reason {r['reason']}"
        console.print(f"[bold]{escape(repr(Path(r['source']).name)[1:-1])}[/]: {escape(line)}")
        for reason in g.get("reasons", []):
            console.print(f"  [red]gate[/] {escape(str(reason))}")
    if any(r["status"] in ("gate-failed", "error", "rejected", "quarantined") for r in results):
        raise typer.Exit(1)


@app.command()
@_unreachable
def promote(
    name: str = typer.Argument(state.DEFAULT_MODEL_NAME, help=NAME_HELP),
    version: Optional[str] = typer.Option(None, "--version", help="Gated version to promote (default: the candidate)."),
    gate_config: Optional[Path] = typer.Option(None, "--gate-config", help="Gate thresholds for the re-check."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="Section of the gate config to apply to the re-check."),
    actor: Optional[str] = typer.Option(None, "--actor", help=ACTOR_HELP),
    note: str = typer.Option("", "--note", help="Why (recorded in the champion history)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=URI_HELP),
):
    """Move `champion` to the candidate after re-checking its gate against the current champion."""
    _env(tracking_uri)
    from flows.promote import promote as flow
    from tasks.lifecycle import PromotionRefused

    try:
        res = flow(name, version, str(gate_config) if gate_config else None, deployment, actor=actor, note=note)
    except PromotionRefused as exc:
        console.print(f"[red]refused:[/] {escape(str(exc))}")
        raise typer.Exit(1)
    console.print(json.dumps(res, indent=2))
    if res["status"] == "refused":
        raise typer.Exit(1)


@app.command()
@_unreachable
def rollback(
    name: str = typer.Argument(state.DEFAULT_MODEL_NAME, help=NAME_HELP),
    to: Optional[str] = typer.Option(None, "--to", help="Version to restore (default: the previous champion, "
                                                        "walking back past versions rolled back from)."),
    force: bool = typer.Option(False, "--force", help="Allow a version whose gate did not pass (needs --note)."),
    note: str = typer.Option("", "--note", help="Why (recorded in the champion history)."),
    actor: Optional[str] = typer.Option(None, "--actor", help=ACTOR_HELP),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=URI_HELP),
):
    """Move `champion` back to a named or the previous version (versions are never changed).
    Only to a version whose gate passed, or the base, unless --force --note."""
    _env(tracking_uri)
    from flows.rollback import rollback as flow
    from tasks.lifecycle import PromotionRefused

    try:
        res = flow(name, to, force=force, note=note, actor=actor)
    except PromotionRefused as exc:
        console.print(f"[red]refused:[/] {escape(str(exc))}")
        raise typer.Exit(1)
    console.print(json.dumps(res, indent=2))


@app.command()
@_unreachable
def history(
    name: str = typer.Argument(state.DEFAULT_MODEL_NAME, help=NAME_HELP),
    fmt: str = typer.Option("table", "--format", help="table | csv | json | parquet."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to FILE (required for parquet)."),
    version: Optional[str] = typer.Option(None, "--version", help="Lineage of this version (default: the champion)."),
    moves: bool = typer.Option(False, "--moves", help="Instead: every move of the champion alias (init, promote, "
                                                      "rollback): when, by whom, from which version, why."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=URI_HELP),
):
    """Every edit in the champion's lineage: who asked, why, ticket, answers before/after,
    held-out scores, gate verdict, run and version (read from MLflow). With --moves: the
    champion's own history (who promoted or rolled back, when, and why)."""
    _env(tracking_uri)
    from odedit import registry
    from odedit.lifecycle.history import export

    if moves:
        hist = registry.champion_history(registry.connect(), name)
        cols = ("at", "action", "version", "from", "by", "note")
        if fmt == "table":
            from rich.table import Table

            t = Table(title=escape(f"{name}: {len(hist)} champion move(s), oldest first"))
            for c in cols:
                t.add_column(c)
            for h in hist:
                t.add_row(*[escape(str(h.get(c) if h.get(c) is not None else "-")) for c in cols])
            console.print(t)
            return
        text = export([{c: h.get(c) for c in cols} for h in hist], fmt, out, cols)
        if text is not None:
            print(text)
        return
    rows = registry.history(registry.connect(), name, version)
    if fmt == "table":
        from rich.table import Table

        t = Table(title=escape(f"{name}: {len(rows)} edit(s) in the champion's lineage"))
        cols = ("version", "request_id", "requester", "ticket", "reason", "answer_before", "answer_after",
                "champion_status", "champion.reliability", "final.reliability", "final.t_generality",
                "final.t_locality", "gate", "run_id")
        for c in cols:
            t.add_column(c.replace("champion_status", "status on champion"))
        for r in rows:
            # every cell is data (ids, free-text reasons, answers): escaped, never rich markup
            t.add_row(*[escape("%.2f" % v if isinstance(v, float) else str(v if v is not None else "-"))
                        for v in [r.get(c) if c != "run_id" else (r["run_id"] or "")[:8] for c in cols]])
        console.print(t)
        if out:
            export(rows, "csv", out)
        return
    text = export(rows, fmt, out)
    if text is not None:
        print(text)


@app.command()
@_unreachable
def show(
    edit_id: str = typer.Argument(..., help="Request id of the edit."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=URI_HELP),
):
    """Everything recorded about one edit (every batch run that contained it), as JSON."""
    _env(tracking_uri)
    from odedit import registry

    found = registry.show(registry.connect(), edit_id)
    if not found:
        console.print(f"[red]no edit with id {escape(repr(edit_id))}[/]")
        raise typer.Exit(1)
    print(json.dumps(found, indent=2, default=str))


@registry_app.command("init")
@_unreachable
def registry_init(
    name: str = typer.Argument(state.DEFAULT_MODEL_NAME, help=NAME_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (default: the embedded model)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=URI_HELP),
):
    """Register version 1 = the base model itself (empty delta) as `champion`, with its fixed
    regression probe set. Does nothing when NAME already has a champion."""
    _env(tracking_uri)
    import tempfile

    from odedit import registry
    from odedit.lifecycle.batch import default_probes
    from odedit.lifecycle.models import resolve_base

    client = registry.connect()
    with state.model_lock(name), tempfile.TemporaryDirectory() as tmp, console.status(f"registering {name} version 1"):
        probes = default_probes(resolve_base(registry.base_ref_for(model)), tmp)
        v = registry.init_model(client, name, model, probes, Path(tmp))
    console.print(f"{name}: champion is version {v} ({len(probes)} regression probes)")
