"""Turning benchmark rows into something a person would rather look at than read: mean ± std
over seeds per (method, mode, T), a rich terminal table, Markdown + standalone HTML with
matplotlib plots (metric vs T per method; cost vs quality), and MLflow artifacts.

Plain functions; mlflow is imported only inside `log_mlflow`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import statistics
from pathlib import Path
from typing import Sequence

from odedit.bench import stress as stress_mod
from odedit.bench.measure import EASYEDIT_METRICS, METRICS, PerfResult, Row
from odedit.metrics import metric_meta, tagged_name

COLUMNS = METRICS + EASYEDIT_METRICS + ("retention", "seconds_per_edit", "steps", "peak_mem_mb", "delta_kb")
LABELS = {
    "reliability": "Rel", "t_generality": "T-Gen", "m_generality": "M-Gen", "t_locality": "T-Loc@answer",
    "m_locality": "M-Loc@answer", "t_locality_easyedit": "T-Loc@easyedit",
    "m_locality_easyedit": "M-Loc@easyedit", "retention": "Retention", "seconds_per_edit": "s/edit", "steps": "steps",
    "peak_mem_mb": "peak MB", "delta_kb": "delta KB",
}
PERCENT = set(METRICS) | set(EASYEDIT_METRICS) | {"retention"}
SCORED = METRICS + EASYEDIT_METRICS


def mlflow_metric_name(col: str) -> str:
    """Score columns carry their protocol (`t_locality/easyedit`, `t_locality/answer`,
    `reliability/easyedit`); MLflow rejects '@', so '/' separates."""
    return tagged_name(col, sep="/") if col in SCORED else col


def summarise(rows: Sequence[Row]) -> list[dict]:
    """One entry per (method, mode, T) in first-seen order: `<col>` = mean over seeds,
    `<col>_std` = sample std over seeds (0 with one seed), `seeds`, `edits` per seed."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.method, r.mode, r.T), []).append(r)
    out = []
    for (method, mode, t), rs in groups.items():
        entry = {"method": method, "mode": mode, "T": t, "seeds": len(rs), "edits": rs[0].edits,
                 "ok": sum(r.ok for r in rs), "total": sum(r.edits for r in rs)}
        for c in COLUMNS:
            vals = [getattr(r, c) for r in rs if getattr(r, c) is not None]
            entry[c] = statistics.fmean(vals) if vals else None
            entry[f"{c}_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
        for split in stress_mod.SPLITS:
            vals = [r.stress[split] for r in rs if r.stress.get(split) is not None]
            if vals:
                entry[f"stress.{split}"] = statistics.fmean(vals)
                entry[f"stress.{split}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- stress splits + verdict
STRESS_COLS = tuple(f"stress.{s}" for s in stress_mod.SPLITS)


def stress_rows(summary: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Stress splits per (method, setting), mean ± std over seeds, in %."""
    entries = [e for e in summary if any(e.get(c) is not None for c in STRESS_COLS)]
    header = ["method", "setting"] + list(stress_mod.SPLITS)
    body = [[e["method"], _setting(e)] + [
        "-" if e.get(c) is None else f"{100 * e[c]:.1f}±{100 * (e.get(c + '_std') or 0):.1f}" for c in STRESS_COLS]
        for e in entries]
    return header, body


def _value(row: Row, col: str) -> float | None:
    return row.stress.get(col.removeprefix("stress.")) if col.startswith("stress.") else getattr(row, col)


def paired(rows: Sequence[Row], a: str, b: str, mode: str, t: int, col: str) -> dict | None:
    """Method `a` minus method `b` on `col`, paired per seed (same requests, same seed).
    verdict: "better" / "worse" when every seed's difference has the same sign AND the mean
    difference exceeds the sample std of the differences (the seed spread); else "no
    difference beyond the seed spread"; fewer than 2 paired seeds: no verdict."""
    def by_seed(m):
        return {r.seed: _value(r, col) for r in rows if r.method == m and r.mode == mode and r.T == t}
    va, vb = by_seed(a), by_seed(b)
    diffs = {s: va[s] - vb[s] for s in sorted(va) if s in vb and va[s] is not None and vb[s] is not None}
    if not diffs:
        return None
    d = list(diffs.values())
    mean = statistics.fmean(d)
    spread = statistics.stdev(d) if len(d) > 1 else None
    if spread is None:
        verdict = "one seed: no verdict"
    elif all(x > 0 for x in d) and mean > spread:
        verdict = "better"
    elif all(x < 0 for x in d) and -mean > spread:
        verdict = "worse"
    else:
        verdict = "no difference beyond the seed spread"
    return {"a": a, "b": b, "col": col, "mode": mode, "T": t, "mean_diff": mean, "spread": spread,
            "per_seed": diffs, "verdict": verdict}


VERDICT_PAIRS = (("odedit-ft-l", "ft-l"), ("odedit-ft-l", "odedit-ft-l[-gen,-loc,-tv]"),
                 ("odedit-lora", "lora"), ("odedit-ft-l[+dual]", "odedit-ft-l"),
                 # what each of ODEdit's terms adds: the default minus the ablation without it
                 ("odedit-ft-l", "odedit-ft-l[-tv]"), ("odedit-ft-l", "odedit-ft-l[-gen]"),
                 ("odedit-ft-l", "odedit-ft-l[-se_nll]"), ("odedit-ft-l", "odedit-ft-l[-loc]"),
                 # cost variants against the default they must match
                 ("odedit-ft-l[+sample1]", "odedit-ft-l"), ("odedit-ft-l[+sample2]", "odedit-ft-l"),
                 ("odedit-ft-l", "odedit-ft-l[+all]"))


def verdict_rows(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Every VERDICT_PAIRS pair present, single and at the largest T, on the five metrics and
    every stress split: the paired difference (points), its seed spread and the verdict."""
    methods = {r.method for r in rows}
    settings = [("single", 1)]
    seq_t = [r.T for r in rows if r.mode == "sequential"]
    if seq_t:
        settings.append(("sequential", max(seq_t)))
    header = ["a vs b", "setting", "measure", "a - b (points)", "seed spread", "per seed", "verdict"]
    body = []
    for a, b in VERDICT_PAIRS:
        if a not in methods or b not in methods:
            continue
        for mode, t in settings:
            for col in METRICS + EASYEDIT_METRICS + STRESS_COLS:
                p = paired(rows, a, b, mode, t, col)
                if p is None:
                    continue
                label = LABELS.get(col, col.removeprefix("stress."))
                body.append([f"{a} vs {b}", "single" if mode == "single" else f"seq T={t}", label,
                             f"{100 * p['mean_diff']:+.1f}", "-" if p["spread"] is None else f"{100 * p['spread']:.1f}",
                             " ".join(f"{100 * v:+.1f}" for v in p["per_seed"].values()), p["verdict"]])
    return header, body


def fmt(entry: dict, col: str) -> str:
    m, s = entry.get(col), entry.get(f"{col}_std")
    if m is None:
        return "-"
    if col in PERCENT:
        return f"{100 * m:.1f}±{100 * (s or 0):.1f}"
    if col == "seconds_per_edit":
        return f"{m:.2f}±{s or 0:.2f}"
    if col in ("peak_mem_mb", "steps"):
        return f"{m:.1f}±{s or 0:.1f}"
    return f"{m:.0f}"


def _setting(e: dict) -> str:
    return "single" if e["mode"] == "single" else f"seq T={e['T']}"


def table_rows(summary: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "setting", "seeds"] + [LABELS[c] for c in COLUMNS]
    body = [[e["method"], _setting(e), str(e["seeds"])] + [fmt(e, c) for c in COLUMNS] for e in summary]
    return header, body


def rich_table(summary: Sequence[dict], title: str = "odedit bench"):
    from rich.table import Table

    header, body = table_rows(summary)
    t = Table(title=title + "  (mean ± std over seeds; quality in %)", header_style="bold")
    for h in header:
        t.add_column(h, justify="left" if h in ("method", "setting") else "right", no_wrap=True)
    last = None
    for e, r in zip(summary, body):
        if last is not None and e["mode"] != last:
            t.add_section()
        last = e["mode"]
        t.add_row(*r)
    return t


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- perf
def perf_rows(results: Sequence[PerfResult]) -> tuple[list[str], list[list[str]]]:
    ref = next((r for r in results if r.method == "ft-l"), results[0] if results else None)
    header = ["method", "samples/step", "step ms (median)", "step ratio vs ft-l",
              "paired: step vs bare ft-l step, same rows", "setup s",
              "edit s (default cfg)", "edit steps", "forward MB", "edit MB", "edit/forward mem",
              "RSS fwd/edit MB"]
    body = []
    for r in results:
        ratio = r.step_ms_median / ref.step_ms_median if ref and ref.step_ms_median else float("nan")
        same = r.extra.get("ftl_same_batch_step_ms")
        ratio_s = f"{ratio:.2f}x"
        same_s = (f"{r.extra['paired_step_ms']:.1f} vs {same:.1f} ms -> {r.extra['step_vs_bare']:.2f}x"
                  if same else "-")
        body.append([r.method, str(r.samples), f"{r.step_ms_median:.1f}", ratio_s, same_s, f"{r.setup_s:.2f}",
                     f"{r.edit_s:.2f}", str(r.edit_steps), f"{r.forward_mb:.1f}", f"{r.edit_mb:.1f}",
                     f"{r.mem_ratio:.2f}x", f"{r.forward_rss_mb:.1f} / {r.edit_rss_mb:.1f}"])
    return header, body


def perf_table(results: Sequence[PerfResult], title: str = "odedit bench --perf"):
    from rich.table import Table

    header, body = perf_rows(results)
    t = Table(title=title, header_style="bold")
    for h in header:
        t.add_column(h, justify="left" if h == "method" else "right", no_wrap=True)
    for r in body:
        t.add_row(*r)
    return t


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_t(summary: Sequence[dict], path: Path) -> Path | None:
    seq = [e for e in summary if e["mode"] == "sequential"]
    if not seq:
        return None
    have_t1 = {e["method"] for e in seq if e["T"] == 1}  # else the single-edit row stands for T=1
    seq += [{**e, "T": 1} for e in summary if e["mode"] == "single" and e["method"] not in have_t1]
    plt = _plt()
    cols = list(METRICS) + ["seconds_per_edit"]
    fig, grid_axes = plt.subplots(2, 3, figsize=(14, 7.5))
    axes = list(grid_axes.flat)
    methods = list(dict.fromkeys(e["method"] for e in seq))
    for ax, col in zip(axes, cols):
        for m in methods:
            es = sorted((e for e in seq if e["method"] == m and e[col] is not None), key=lambda e: e["T"])
            if not es:
                continue
            k = 100 if col in PERCENT else 1
            ax.errorbar([e["T"] for e in es], [k * e[col] for e in es],
                        yerr=[k * (e[f"{col}_std"] or 0) for e in es], marker="o", capsize=3, label=m,
                        linestyle="--" if "[" in m or m == "icl" else "-")
        ax.set_title(LABELS[col] + (" (= retention)" if col == "reliability" else "")
                     + (" (%)" if col in PERCENT else ""))
        ax.set_xlabel("T (sequential edits)")
        ax.set_xticks(sorted({e["T"] for e in seq}))
        ax.grid(alpha=0.3)
    fig.suptitle("after T sequential edits (mean ± std over seeds)")
    axes[-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality(e: dict) -> float | None:
    vals = [e[c] for c in METRICS if e.get(c) is not None]
    return 100 * statistics.fmean(vals) if vals else None


def plot_cost_quality(summary: Sequence[dict], path: Path) -> Path | None:
    """x: seconds per edit, y: mean of the five metrics; one point per method (single, and
    sequential at the largest T), error bars = std over seeds of the seconds."""
    pts = [e for e in summary if e["mode"] == "single"]
    seq = [e for e in summary if e["mode"] == "sequential"]
    tmax = max((e["T"] for e in seq), default=None)
    if not pts and not seq:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if seq else 1, figsize=(11 if seq else 6, 4.2), squeeze=False)
    for ax, group, title in ((axes[0][0], pts, "single edits"),
                             *(((axes[0][1], [e for e in seq if e["T"] == tmax], f"sequential, T={tmax}"),)
                               if seq else ())):
        for e in group:
            q = quality(e)
            if q is None or e["seconds_per_edit"] is None:
                continue
            ax.errorbar(e["seconds_per_edit"], q, xerr=e["seconds_per_edit_std"] or 0, fmt="o", capsize=3)
            ax.annotate(e["method"], (e["seconds_per_edit"], q), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xlabel("seconds per edit")
        ax.set_ylabel("mean of Rel, T-Gen, M-Gen, T-Loc, M-Loc (%)")
        ax.set_title(f"cost vs quality: {title}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- files
def _html_table(header, body) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def write_report(out: Path, rows: Sequence[Row], meta: dict, perf: Sequence[PerfResult] | None = None,
                 profile: dict | None = None, notes: str = "") -> dict[str, Path]:
    """Write rows.json, summary.json, plots, report.md and a standalone report.html to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    summary = summarise(rows) if rows else []
    (out / "rows.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1))
    (out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1, default=str))
    paths["rows"], paths["summary"] = out / "rows.json", out / "summary.json"
    images = []
    if summary:
        for name, fn in (("metric_vs_T.png", plot_metric_vs_t), ("cost_vs_quality.png", plot_cost_quality)):
            p = fn(summary, out / name)
            if p:
                images.append(p)
                paths[name] = p
    md = [f"# odedit bench: {meta.get('grid', '')}", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    md.append("")
    html_parts = [f"<h1>odedit bench: {html.escape(str(meta.get('grid', '')))}</h1><ul>"
                  + "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in meta.items())
                  + "</ul>"]
    if summary:
        header, body = table_rows(summary)
        md += ["## Quality and cost (mean ± std over seeds; quality in %)", "", markdown_table(header, body), "",
               "Rel/T-Gen/M-Gen/T-Loc/M-Loc: EasyEdit definitions on held-out probes. single: each edit "
               "on the unedited model, scored right after it. seq T: T edits applied one after another, "
               "then all T re-scored (Rel after T edits = retention). peak MB: memory added above the "
               "process's level when the cell began.", ""]
        html_parts.append("<h2>Quality and cost (mean ± std over seeds; quality in %)</h2>" + _html_table(header, body))
        for p in images:
            md += [f"![{p.stem}]({p.name})", ""]
            b64 = base64.b64encode(p.read_bytes()).decode()
            html_parts.append(f"<h3>{html.escape(p.stem)}</h3><img src='data:image/png;base64,{b64}' style='max-width:100%'>")
    if summary and any(e.get(c) is not None for e in summary for c in STRESS_COLS):
        header, body = stress_rows(summary)
        md += ["## Stress splits (mean ± std over seeds, %)", "", markdown_table(header, body), "",
               "Protocols (odedit/bench/stress.py): " + "; ".join(f"{k}: {v}" for k, v in stress_mod.PROTOCOL.items()),
               ""]
        html_parts.append("<h2>Stress splits</h2>" + _html_table(header, body))
    if rows:
        header, body = verdict_rows(rows)
        if body:
            md += ["## Paired verdicts (a - b per seed)", "", markdown_table(header, body), "",
                   "better / worse: every seed's paired difference has that sign and the mean difference "
                   "exceeds the sample std of the differences; otherwise no claim.", ""]
            html_parts.append("<h2>Paired verdicts</h2>" + _html_table(header, body))
    if perf:
        header, body = perf_rows(perf)
        md += ["## Editor performance (--perf)", "", markdown_table(header, body), ""]
        html_parts.append("<h2>Editor performance</h2>" + _html_table(header, body))
    if profile:
        md += [f"## Where one {profile['method']} edit's time goes", "",
               f"edit {profile['edit_s']:.2f} s, {profile['steps']} steps, setup {profile['setup_s']:.2f} s", "",
               "torch.profiler, top operators by self time:", "", "```", profile["torch_ops"], "```", "",
               "cProfile, top functions by own time:", "", "```", profile["cprofile_tottime"], "```", "",
               "cProfile, cumulative:", "", "```", profile["cprofile_cumulative"], "```", ""]
        html_parts.append(f"<h2>Profile of one {html.escape(profile['method'])} edit</h2>"
                          + "".join(f"<pre>{html.escape(profile[k])}</pre>"
                                    for k in ("torch_ops", "cprofile_tottime", "cprofile_cumulative")))
    if notes:
        md += ["## Notes", "", notes, ""]
        html_parts.append(f"<h2>Notes</h2><pre>{html.escape(notes)}</pre>")
    (out / "report.md").write_text("\n".join(md))
    style = ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}tr:nth-child(even){background:#f6f6f6}pre{background:#f4f4f4;padding:8px;"
             "font-size:12px;overflow-x:auto}</style>")
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>odedit bench"
                                     f"</title>{style}</head><body>{''.join(html_parts)}</body></html>")
    paths["md"], paths["html"] = out / "report.md", out / "report.html"
    return paths


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    state = Path(os.environ.get("ODEDIT_STATE_DIR", "state")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state / 'mlflow.db'}"


def _key(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_./ " else "_" for c in s)


def log_mlflow(out: Path, meta: dict, rows: Sequence[Row], perf: Sequence[PerfResult] | None = None,
               experiment: str = "odedit-bench") -> str:
    """Log one benchmark run: meta as params, per-cell means as metrics, `out` as artifacts.
    Returns the run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"bench-{meta.get('grid', 'custom')}") as run:
        mlflow.log_params({_key(k): str(v)[:500] for k, v in meta.items()})
        mlflow.log_params({_key(f"metric_meta.{mlflow_metric_name(c)}"): m.comparable_group
                           for c, m in metric_meta().items()})
        metrics = {}
        for e in summarise(rows) if rows else []:
            tag = f"{e['method']}.{'single' if e['mode'] == 'single' else 'T' + str(e['T'])}"
            for c in COLUMNS:
                if e[c] is not None and math.isfinite(e[c]):
                    metrics[_key(f"{tag}.{mlflow_metric_name(c)}")] = e[c]
            for c in STRESS_COLS:
                if e.get(c) is not None:
                    metrics[_key(f"{tag}.{c.replace('@', '/')}")] = e[c]
        for r in perf or []:
            metrics[_key(f"perf.{r.method}.step_ms")] = r.step_ms_median
            metrics[_key(f"perf.{r.method}.edit_s")] = r.edit_s
            metrics[_key(f"perf.{r.method}.mem_ratio")] = r.mem_ratio
        if metrics:
            mlflow.log_metrics(metrics)
        for f in sorted(Path(out).iterdir()):  # the report files, not the generated request images
            if f.is_file() and f.suffix in (".md", ".html", ".png", ".json"):
                mlflow.log_artifact(str(f), artifact_path="bench")
        return run.info.run_id
