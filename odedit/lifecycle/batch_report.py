"""What a person reads about one batch, in Prefect and in MLflow: the per-edit table (request,
requester, answer before -> after, final-model held-out scores, status), the gate's checks and
verdict, and links between the Prefect flow run, the MLflow run and the model version.

Plain functions (no Prefect, no MLflow imports); the flow publishes the results.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from odedit.lifecycle import gate as gate_mod

SCORE_COLUMNS = ("reliability", "t_generality", "m_generality", "t_locality", "m_locality")
TABLE_COLUMNS = ("request_id", "requester", "subject", "target", "answer_before", "answer_after", "status",
                 "final_status") + tuple(f"final.{c}" for c in SCORE_COLUMNS)


def edit_table(records: Sequence[Mapping], requests: Mapping[str, Mapping]) -> list[dict]:
    """One row per edit record: who asked, what changed, the FINAL-model held-out scores."""
    rows = []
    for r in records:
        req = requests.get(r["request_id"], {})
        final = r.get("final") or {}
        row = {"request_id": r["request_id"], "requester": req.get("requester"), "subject": req.get("subject"),
               "target": r.get("target"), "answer_before": r.get("answer_before"),
               "answer_after": r.get("answer_after"), "status": r.get("status"), "final_status": final.get("status")}
        for c in SCORE_COLUMNS:
            v = final.get(c)
            row[f"final.{c}"] = float(v) if isinstance(v, (int, float)) else None
        rows.append(row)
    return rows


def mlflow_links(tracking_uri: str, experiment_id: str | None, run_id: str | None, name: str,
                 version: str | None) -> dict[str, str]:
    """UI links where the tracking URI is an http(s) server; else the ids and how to look."""
    base = tracking_uri.rstrip("/")
    if base.startswith(("http://", "https://")):
        out = {}
        if run_id and experiment_id:
            out["MLflow run"] = f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
        if version:
            out["model version"] = f"{base}/#/models/{name}/versions/{version}"
        return out
    out = {"MLflow run": f"run {run_id} in {tracking_uri} (view: mlflow ui --backend-store-uri {tracking_uri})"} \
        if run_id else {}
    if version:
        out["model version"] = f"models:/{name}/{version}"
    return out


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(batch_id: str, name: str, status: str, parent: str | None, version: str | None,
             table: Sequence[Mapping], verdict: gate_mod.GateVerdict | None, links: Mapping[str, str],
             rejected: int = 0, skipped: Sequence[str] = ()) -> str:
    """The batch as Markdown: header, links, gate checks, the per-edit table."""
    lines = [f"# Edit batch `{batch_id}` on `{name}`: {status}", ""]
    lines.append(f"- built on version {parent or '-'}; registered as version {version or '- (nothing registered)'}")
    lines.append(f"- {len(table)} edit(s) run, {rejected} request(s) rejected by validation, "
                 f"{len(skipped)} already held (skipped)")
    for label, url in links.items():
        lines.append(f"- {label}: [{url}]({url})" if url.startswith("http") else f"- {label}: `{url}`")
    if verdict is not None:
        lines += ["", f"## Gate: {'PASSED' if verdict.passed else 'FAILED'} (scored on the final candidate)", ""]
        lines += [f"- {line}" for line in gate_mod.format_checks(verdict)]
        lines += [f"- reason: {r}" for r in verdict.reasons]
    lines += ["", "## Edits (held-out scores on the final candidate, locality protocol "
              f"`{verdict.locality_protocol if verdict else 'answer'}`)", ""]
    cols = ("request_id", "requester", "answer_before", "answer_after", "target", "status", "final_status") + tuple(
        f"final.{c}" for c in SCORE_COLUMNS)
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for row in table:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def artifact_key(batch_id: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a batch."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"edit-batch-{batch_id}".lower()).strip("-")
    return key[:100] or "edit-batch"
