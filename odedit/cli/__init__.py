"""The `odedit` command line. Each sub-command lives in its own module of this package and
registers itself on `app`; this module only assembles them."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="odedit",
    help=(
        "Correct what a multimodal LLM believes, one audited edit at a time.\n\n"
        "ODEdit (invariant trajectory learning) wrapped around FT-L or LoRA, on the embedded "
        "tiny LLaVA model by default or any image-text-to-text checkpoint."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules; each defines its commands with @app.command().
_COMMAND_MODULES = ["edit", "validate", "lifecycle", "bench", "models"]

for _name in _COMMAND_MODULES:
    importlib.import_module(f"odedit.cli.{_name}")


def main() -> None:  # console-script entry point
    app()
