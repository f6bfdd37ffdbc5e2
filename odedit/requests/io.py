"""Readers for request batches: JSONL, Parquet, and MMEdit E-VQA / E-IC JSON (as distributed
for EasyEdit), plus in-memory lists of dicts.

This module owns turning a file into `RawRow`s: each keeps its position, a human reference
(`file:line`), the parsed payload (or None) and the ORIGINAL payload text, so nothing is lost
on the way to quarantine. Row-level problems (a bad JSONL line, a non-object record, invalid
UTF-8) become `Issue`s on that row; only a file that cannot be read at all raises `BatchError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from odedit.requests.reasons import Issue, Reason

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
JSON_SUFFIXES = {".json"}
SUPPORTED_SUFFIXES = JSONL_SUFFIXES | PARQUET_SUFFIXES | JSON_SUFFIXES

# Keys of an MMEdit E-VQA / E-IC record as EasyEdit reads them.
MMEDIT_KEYS = ("src", "pred", "rephrase", "alt", "image", "image_rephrase",
               "loc", "loc_ans", "m_loc", "m_loc_q", "m_loc_a")

_SURROGATE = re.compile("[\ud800-\udfff]")


class BatchError(ValueError):
    """The batch as a whole cannot be validated (unreadable, unsupported, empty)."""


class BatchReadError(BatchError):
    pass


class UnsupportedBatchFormat(BatchError):
    pass


class EmptyBatchError(BatchError):
    pass


@dataclass
class RawRow:
    """One input row before validation."""

    index: int                      # 0-based position in the input
    ref: str                        # human reference: `batch.jsonl:12`, `E-VQA.json[3]`
    payload: Any                    # parsed value (dict for a well-formed row) or None
    original: str                   # the original payload as a JSON string / the raw line
    synthetic_id: str | None = None  # id to use when the payload has none (MMEdit)
    issues: list[Issue] = field(default_factory=list)

    @property
    def row_id(self) -> str:
        if isinstance(self.payload, Mapping):
            rid = self.payload.get("id")
            if isinstance(rid, str) and rid.strip() and not _SURROGATE.search(rid):
                return rid
        return self.synthetic_id or self.ref


def dumps_payload(value: Any) -> str:
    """The JSON string stored in quarantine. ASCII-escaped so lone surrogates (from invalid
    UTF-8) survive; non-JSON values (timestamps, bytes) become strings."""
    def default(o):
        if isinstance(o, bytes):
            return o.decode("utf-8", errors="backslashreplace")
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)
    return json.dumps(value, ensure_ascii=True, default=default, sort_keys=False)


def _utf8_issues(payload: Any) -> list[Issue]:
    """Fields whose strings came from invalid UTF-8 (decoded with surrogateescape)."""
    if not isinstance(payload, Mapping):
        return []
    out = []
    for key, value in payload.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and _SURROGATE.search(v) for v in values):
            out.append(Issue(str(key), Reason.INVALID_UTF8,
                             "text is not valid UTF-8"))
    return out


def _decode(data: bytes) -> str:
    """UTF-8 with surrogateescape: invalid bytes survive as lone surrogates and are reported
    on the field that holds them, instead of failing the whole file."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def read_jsonl(path: Path) -> list[RawRow]:
    data = path.read_bytes()
    rows: list[RawRow] = []
    parsed_any = False
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        ref = f"{path.name}:{lineno}"
        text = _decode(raw.rstrip(b"\r"))
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            issue = Issue(None, Reason.MALFORMED_ROW, f"not valid JSON ({exc.msg} at column {exc.colno})")
            rows.append(RawRow(len(rows), ref, None, text, issues=[issue]))
            continue
        parsed_any = True
        row = RawRow(len(rows), ref, payload, dumps_payload(payload))
        if not isinstance(payload, dict):
            row.issues.append(Issue(None, Reason.MALFORMED_ROW,
                                    f"expected a JSON object, got {type(payload).__name__}"))
        row.issues.extend(_utf8_issues(payload))
        rows.append(row)
    if rows and not parsed_any:
        raise BatchReadError(f"{path}: no line is valid JSON; is this really a JSONL file?")
    return rows


def read_parquet(path: Path) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise BatchReadError(f"{path}: not a readable Parquet file ({exc})") from exc
    rows = []
    for i, rec in enumerate(table.to_pylist()):
        ref = f"{path.name}[{i}]"
        payload = {}
        for k, v in rec.items():
            if isinstance(v, bytes):  # a binary column: decode like a JSONL line would be
                v = _decode(v)
            payload[k] = v
        row = RawRow(i, ref, payload, dumps_payload(payload))
        row.issues.extend(_utf8_issues(payload))
        rows.append(row)
    return rows


def read_json(path: Path) -> list[RawRow]:
    """A JSON list of records (MMEdit E-VQA / E-IC, ids synthesised as `<stem>-<index>` when
    absent) or an object `{"batch_id": ..., "requests": [...]}` (an EditBatch)."""
    text = _decode(path.read_bytes())
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BatchReadError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    if isinstance(doc, dict) and isinstance(doc.get("requests"), list):
        records = doc["requests"]
    elif isinstance(doc, list):
        records = doc
    else:
        raise BatchReadError(
            f"{path}: expected a JSON list of records (MMEdit) or an object with a 'requests' list, "
            f"got {type(doc).__name__}"
        )
    rows = []
    for i, rec in enumerate(records):
        ref = f"{path.name}[{i}]"
        row = RawRow(i, ref, rec, dumps_payload(rec), synthetic_id=f"{path.stem}-{i}")
        if isinstance(rec, dict):
            if "id" not in rec:  # MMEdit: stable id from file stem and position
                row.payload = {"id": row.synthetic_id, **rec}
        else:
            row.issues.append(Issue(None, Reason.MALFORMED_ROW,
                                    f"expected a JSON object, got {type(rec).__name__}"))
        row.issues.extend(_utf8_issues(rec))
        rows.append(row)
    return rows


def read_records(records: Iterable[Any], name: str = "rows") -> list[RawRow]:
    """In-memory rows (dicts, or EditRequest-like pydantic models)."""
    rows = []
    for i, rec in enumerate(records):
        if hasattr(rec, "model_dump"):
            rec = rec.model_dump(mode="json")
        ref = f"{name}[{i}]"
        row = RawRow(i, ref, rec, dumps_payload(rec))
        if not isinstance(rec, Mapping):
            row.issues.append(Issue(None, Reason.MALFORMED_ROW,
                                    f"expected an object, got {type(rec).__name__}"))
        row.issues.extend(_utf8_issues(rec))
        rows.append(row)
    return rows


def read_batch(path: str | Path) -> list[RawRow]:
    """Read a batch file by its suffix. Raises `BatchError` for a file that cannot be read at
    all; an empty result is returned as-is (the caller decides that empty is an error)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedBatchFormat(
            f"{path}: unsupported batch file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    if not path.is_file():
        raise BatchReadError(f"{path}: no such file")
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(path)
    if suffix in PARQUET_SUFFIXES:
        return read_parquet(path)
    return read_json(path)
