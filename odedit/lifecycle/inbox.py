"""The inbox directory drained by the scheduled batch. A request file is never deleted:
    inbox/*.jsonl|parquet|json -> inbox/done/        every accepted request is registered
                                 -> inbox/quarantine/  the batch failed its gate (with a reason file)
    stays in inbox/                                   an edit diverged or a step failed: retried next run
Rows refused by validation are quarantined by the validator (their parquet is copied beside)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

SUFFIXES = {".jsonl", ".ndjson", ".parquet", ".pq", ".json"}


def pending_files(inbox: str | Path) -> list[Path]:
    d = Path(inbox)
    d.mkdir(parents=True, exist_ok=True)
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix in SUFFIXES and not p.name.endswith(".reason.json"))


def disposition(result: dict) -> str:
    """Where a processed file goes, from an edit_batch result: done | quarantine | keep."""
    if result.get("status") == "gate-failed":
        return "quarantine"
    if result.get("pending"):
        return "keep"
    return "done"


def move(path: str | Path, where: str, reason: dict | None = None) -> Path:
    """Move `path` into `where` (done/quarantine) beside it, never overwriting."""
    path = Path(path)
    dest_dir = path.parent / where
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    if dest.exists():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        dest = dest_dir / f"{path.stem}.{stamp}{path.suffix}"
    shutil.move(str(path), dest)
    if reason is not None:
        dest.with_name(dest.name + ".reason.json").write_text(json.dumps(reason, indent=2, default=str))
    return dest
