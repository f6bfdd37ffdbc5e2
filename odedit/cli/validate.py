"""`odedit validate BATCH`: validate a batch of edit requests, quarantine what is refused,
print a summary (rich table, or `--json`). Exit codes: 0 all accepted, 1 some rows rejected,
2 the batch as a whole could not be validated (unreadable, unsupported, empty, bad model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from odedit.cli import app

console = Console()
err_console = Console(stderr=True)


def _limits(model: Optional[str], no_model: bool, max_prompt: Optional[int], max_target: Optional[int]):
    """Limits from the model's tokenizer/config; without a model, from the flags (or defaults)."""
    from odedit.requests.limits import ValidationLimits

    overrides = {"max_prompt_tokens": max_prompt, "max_target_tokens": max_target}
    if no_model:
        return ValidationLimits(source="flags").with_overrides(**overrides), None
    note = None
    if model is None:
        try:
            from odedit.models.embedded import default_model_path

            model = str(default_model_path())
        except (ImportError, FileNotFoundError) as exc:
            note = f"no model available ({exc}); using token limits from flags / defaults"
            return ValidationLimits(source="flags").with_overrides(**overrides), note
    try:
        return ValidationLimits.from_model(model, max_target_tokens=max_target, max_prompt_tokens=max_prompt), note
    except Exception as exc:  # OSError / ValueError from transformers for a bad directory
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot read tokenizer/config of model {model!r}: {type(exc).__name__}: {first}") from exc


def summary_table(report) -> Table:
    from odedit.requests.reasons import DESCRIPTIONS, Reason

    table = Table(title=escape(f"batch {report.batch_id}: {report.rows_in} row(s) in"), show_lines=False)
    table.add_column("outcome")
    table.add_column("rows", justify="right")
    table.add_column("meaning")
    table.add_row("[green]accepted[/]", str(report.accepted), "")
    for code, n in report.rejected_by_reason.items():
        desc = DESCRIPTIONS.get(Reason(code), "") if code in Reason._value2member_map_ else ""
        table.add_row(f"[red]rejected[/] {escape(code)}", str(n), escape(desc))
    table.add_section()
    table.add_row("total out", str(report.accepted + report.rejected), f"{report.duration_s:.2f} s")
    return table


@app.command()
def validate(
    batch: Path = typer.Argument(..., help="Batch of edit requests: .jsonl, .parquet, or MMEdit E-VQA/E-IC .json."),
    image_root: Optional[List[Path]] = typer.Option(
        None, "--image-root", help="Directory image paths are resolved against; repeat for several "
                                   "(default: the batch file's directory). Paths may not leave them."),
    out: Path = typer.Option(Path("out/validate"), "--out", "-o",
                             help="Where quarantine.parquet, accepted.jsonl, gx_result.json, report.json go."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Model whose tokenizer and context give the token limits "
                                             "(default: the embedded model)."),
    no_model: bool = typer.Option(False, "--no-model", help="Do not load a tokenizer: approximate token "
                                                            "counts, limits from the flags."),
    max_prompt_tokens: Optional[int] = typer.Option(None, help="Prompt token limit (overrides the model's)."),
    max_target_tokens: Optional[int] = typer.Option(None, help="Target token limit (overrides the model's)."),
    skip_images: bool = typer.Option(False, "--skip-images", help="Do not open image files (path checks only)."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable report on stdout."),
    show: int = typer.Option(20, help="How many rejected rows to list."),
):
    """Validate a batch of edit requests; rejected rows go to OUT/quarantine.parquet with their
    original payload. Exits 1 if any row was rejected, 2 if the batch could not be validated."""
    from odedit.requests import BatchError, validate_batch

    def fail(msg: str) -> None:
        if json_out:
            typer.echo(json.dumps({"error": msg, "exit_code": 2}))
        else:
            err_console.print(f"[red]error[/]: {escape(msg)}", soft_wrap=True)
        raise typer.Exit(2)

    try:
        limits, note = _limits(model, no_model, max_prompt_tokens, max_target_tokens)
    except ValueError as exc:
        fail(str(exc))
    roots = image_root or [batch.parent]
    try:
        result = validate_batch(batch, roots, limits, out_dir=out, check_images=not skip_images)
    except BatchError as exc:
        fail(str(exc))
    report = result.report
    if json_out:
        doc = report.model_dump(mode="json")
        doc["rejected_rows"] = [r.model_dump(mode="json", exclude={"payload"}) for r in result.rejected]
        if note:
            doc["note"] = note
        typer.echo(json.dumps(doc, indent=2))
    else:
        if note:
            console.print(f"[yellow]note[/]: {escape(note)}")
        console.print(summary_table(report))
        for r in result.rejected[:show]:
            console.print(Text.assemble(("rejected ", "red"), f"[{r.reason}] {r.message}"), highlight=False,
                          soft_wrap=True)
        if len(result.rejected) > show:
            console.print(escape(f"... and {len(result.rejected) - show} more (see {report.artifacts.get('quarantine')})"))
        console.print(escape(f"artifacts in {out}: quarantine.parquet, accepted.jsonl, gx_result.json, report.json"))
    if result.rejected:
        raise typer.Exit(1)
