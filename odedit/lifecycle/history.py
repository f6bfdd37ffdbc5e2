"""Audit rows of edits (pure): built from what the registry stores (version tags and each
batch run's edits.json), and exported as table / csv / json / parquet. No second source of
truth: `odedit.registry` reads MLflow, this module only shapes the rows."""

from __future__ import annotations

import json
from pathlib import Path

from odedit.lifecycle.gate import SCORES

COLUMNS = ["request_id", "requester", "reason", "ticket", "submitted_at", "subject", "prompt", "target",
           "answer_before", "answer_after", *[f"pre.{s}" for s in SCORES], *[f"post.{s}" for s in SCORES],
           *[f"final.{s}" for s in SCORES], "champion_status", "champion.reliability",
           "status", "gate", "run_id", "version", "parent_version", "batch_id", "method", "registered_at"]


def rows_from_run(edits: dict, version: dict, run_id: str, only: set[str] | None = None) -> list[dict]:
    """One row per edit record of a batch run (`edits.json`), joined with its version tags."""
    out = []
    reqs = edits.get("requests", {})
    for r in edits.get("records", []):
        if only is not None and r["request_id"] not in only:
            continue
        a = reqs.get(r["request_id"], {})
        row = {"request_id": r["request_id"], "requester": a.get("requester"), "reason": a.get("reason"),
               "ticket": a.get("ticket"), "submitted_at": a.get("submitted_at"), "subject": a.get("subject"),
               "prompt": a.get("src"), "target": r.get("target"), "answer_before": r.get("answer_before"),
               "answer_after": r.get("answer_after"), "status": r.get("status"),
               "gate": "passed" if (edits.get("gate") or {}).get("passed") else "failed",
               "run_id": run_id, "version": version.get("version"), "parent_version": edits.get("parent_version"),
               "batch_id": edits.get("batch_id"), "method": (edits.get("config") or {}).get("method"),
               "registered_at": version.get("created_at")}
        for side in ("pre", "post", "final"):
            for s in SCORES:
                row[f"{side}.{s}"] = (r.get(side) or {}).get(s)
        row["request_hash"] = r.get("request_hash")
        out.append(row)
    return out


def annotate(rows: list[dict], ledger, version: str) -> list[dict]:
    """Each row's status on `version` from that version's ledger (odedit.lifecycle.ledger):
    holds / lost / superseded, or `re-edited in N` when the same request was edited again by a
    later version of the lineage (the later row carries the status)."""
    by_hash = {e.request_hash: e for e in ledger.entries}
    for row in rows:
        e = by_hash.get(row.get("request_hash"))
        row["champion_status"], row["champion.reliability"] = None, None
        if e is None:
            continue
        introduced = e.version or str(version)
        if str(row.get("version")) == str(introduced):
            row["champion_status"] = e.status
            row["champion.reliability"] = (e.scores or {}).get("reliability")
        else:
            row["champion_status"] = f"re-edited in {introduced}"
    return rows


def export(rows: list[dict], fmt: str, out: str | Path | None, columns: tuple | list = COLUMNS) -> str | None:
    """csv/json/parquet to `out` (json/csv to stdout text when out is None); table returns None."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(columns))
    if fmt == "json":
        text = json.dumps(rows, indent=2, default=str)
    elif fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "parquet":
        if out is None:
            raise ValueError("--format parquet needs --out FILE")
        df.to_parquet(out, index=False)
        return None
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if out is not None:
        Path(out).write_text(text)
        return None
    return text
