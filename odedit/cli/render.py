"""Terminal rendering shared by commands: the per-edit metrics table and run summaries."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from odedit.editing import EditRun

console = Console()
if not console.is_terminal:  # logs and CI: do not squeeze tables into 80 columns
    console = Console(width=200)
METRICS = [("reliability", "Rel"), ("t_generality", "T-Gen"), ("m_generality", "M-Gen"),
           ("t_locality", "T-Loc"), ("m_locality", "M-Loc")]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}"


def edit_table(run: "EditRun") -> Table:
    # Ids, answers and errors come from requests and models: escaped, never read as rich markup.
    title = escape(f"{run.config.method} - {'sequential' if run.sequential else 'single'} edits (before -> after, %)")
    table = Table(title=title, show_lines=False)
    table.add_column("request")
    table.add_column("answer before -> after")
    for _, short in METRICS:
        table.add_column(short, justify="right")
    table.add_column("steps", justify="right")
    table.add_column("s", justify="right")
    for r in run.records:
        if r.status != "ok":
            error = ((r.error or '').splitlines() or [''])[0][:60]
            table.add_row(escape(r.request_id), f"[red]{escape(r.status)}[/]: {escape(error)}",
                          *["-"] * len(METRICS), str(r.steps), f"{r.seconds:.2f}")
            continue
        cells = [f"{_pct(getattr(r.pre, k, None))}->{_pct(getattr(r.post, k, None))}" for k, _ in METRICS]
        table.add_row(escape(r.request_id), escape(f"{r.answer_before} -> {r.answer_after} (target {r.target})"),
                      *cells, str(r.steps), f"{r.seconds:.2f}")
    s = run.summary()
    table.add_section()
    table.add_row("mean", f"{s['ok']}/{s['edits']} ok",
                  *[f"{_pct(s.get('pre.' + k))}->{_pct(s.get('post.' + k))}" for k, _ in METRICS],
                  "", f"{s['seconds_per_edit']:.2f}" if s["seconds_per_edit"] else "-")
    if run.retention is not None:
        table.caption = f"retention of earlier edits after the last: {100 * run.retention:.1f}%"
    return table
