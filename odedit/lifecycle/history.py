"""Audit rows of edits (pure): built from what the registry stores (version tags and each
batch run's edits.json), and exported as table / csv / json / parquet. No second source of
truth: `odedit.registry` reads MLflow, this module only shapes the rows."""

from __future__ import annotations

import json
from pathlib import Path

from odedit.lifecycle.gate import SCORES

COLUMNS = ["request_id", "requester", "reason", "ticket", "submitted_at", "subject", "prompt", "target",
           "answer_before", "answer_after", *[f"pre.{s}" for s in SCORES], *[f"post.{s}" for s in SCORES],
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
        for side in ("pre", "post"):
            for s in SCORES:
                row[f"{side}.{s}"] = (r.get(side) or {}).get(s)
        out.append(row)
    return out


def export(rows: list[dict], fmt: str, out: str | Path | None) -> str | None:
    """csv/json/parquet to `out` (json/csv to stdout text when out is None); table returns None."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
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
