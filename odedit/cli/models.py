"""`odedit models ...`: the supported model families (`families`) and their tiny random
checkpoints built offline (`make-tiny FAMILY OUT_DIR`), for trying odedit on each family
without a model hub."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from odedit.cli import app
from odedit.cli.render import console

models_app = typer.Typer(help="Supported model families and their tiny offline checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("families")
def families():
    """List the supported model families (config.model_type) and what odedit does per family."""
    from odedit.models.families import FAMILIES

    table = Table(title="model families")
    for col in ("model_type", "family", "edited MLP", "images", "labels", "BOS", "prefix cache",
                "LM head only where read"):
        table.add_column(col)
    for mtype, fam in FAMILIES.items():
        mlp = f"{fam.mlp + '.' if fam.mlp else ''}{fam.proj_names.get('down_proj', 'down_proj')}"
        images = ("per-sample lists" if fam.nested_images else "flat list") + \
            (", processor adds tokens" if fam.placeholder == "processor" else "")
        prefix = ("yes, inside the edited layer" if fam.mlp_cache else "yes") if fam.prefix_cache else "no"
        head = "yes" if fam.prefix_cache or fam.logits_mask else "no"
        table.add_row(mtype, fam.name, mlp, images, fam.labels, fam.bos, prefix, head)
    console.print(table)


@models_app.command("make-tiny")
def make_tiny(
    family: str = typer.Argument(..., help="model_type of the family (see `odedit models families`)."),
    out_dir: Path = typer.Argument(..., help="Directory to write the checkpoint to (kept if it exists)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
):
    """Build FAMILY's tiny random checkpoint (real transformers classes, tokenizer trained
    locally, no download) into OUT_DIR; `odedit edit --model OUT_DIR` then edits it."""
    from odedit.models.tiny_families import BUILDERS, make_tiny as build

    if family not in BUILDERS:
        console.print(f"[red]error[/]: unknown family {escape(family)!s}; choose one of {escape(', '.join(BUILDERS))}")
        raise typer.Exit(2)
    path = build(family, out_dir, seed=seed)
    console.print(f"tiny {escape(family)} checkpoint in [bold]{escape(str(path))}[/]")
