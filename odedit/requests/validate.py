"""Validation of a batch of edit requests, end to end: read -> row checks (types, UTF-8,
control characters, probe shapes) -> the Great Expectations suite over the batch table ->
image checks -> the `EditRequest` model. Every input row ends accepted or rejected, never
both, never neither (`ValidationReport.rows_in == accepted + rejected`).

With `out_dir` it writes: `quarantine.parquet` (one row per rejected input row with its
original payload as JSON), `accepted.jsonl`, `gx_result.json` (the GX validation result),
`report.json` (the `ValidationReport`).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pydantic import ValidationError

from odedit.requests.images import ImageChecker
from odedit.requests.io import BatchError, EmptyBatchError, RawRow, ReadLimits, read_batch, read_records
from odedit.requests.limits import ValidationLimits
from odedit.requests.reasons import Issue, Reason
from schemas.batch import EditBatch, RejectedRow, RowIssue, ValidationReport
from schemas.ids import display_id, id_problem
from schemas.request import EditRequest

SCALAR_TEXT = ("id", "image", "src", "alt", "pred", "subject", "requester", "reason", "ticket")
LIST_TEXT = ("rephrase", "image_rephrase", "loc", "loc_ans", "m_loc", "m_loc_q", "m_loc_a",
             "train_rephrase", "train_image_rephrase")
IMAGE_LISTS = ("image_rephrase", "m_loc", "train_image_rephrase")
# C0 controls except tab / newline / carriage return, DEL, C1 controls
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")

QUARANTINE_FILE = "quarantine.parquet"
ACCEPTED_FILE = "accepted.jsonl"
GX_RESULT_FILE = "gx_result.json"
REPORT_FILE = "report.json"


@dataclass
class ValidationResult:
    accepted: list[EditRequest]
    rejected: list[RejectedRow]
    report: ValidationReport
    gx_result: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.rejected

    def batch(self) -> EditBatch:
        """The accepted requests as an `EditBatch` (raises if none was accepted)."""
        return EditBatch(batch_id=self.report.batch_id, source=self.report.source, requests=self.accepted)


def _text_issue(name: str, value: str) -> Issue | None:
    if _SURROGATE.search(value):
        return Issue(name, Reason.INVALID_UTF8, "text is not valid UTF-8")
    m = _CONTROL.search(value)
    if m:
        return Issue(name, Reason.CONTROL_CHARACTERS,
                     f"contains control character U+{ord(m.group()):04X} at position {m.start()}")
    return None


def _type_name(v: Any) -> str:
    return f"{type(v).__name__} {v!r}" if isinstance(v, (int, float, bool)) else type(v).__name__


def row_issues(payload: Mapping[str, Any]) -> list[Issue]:
    """Per-row checks that need no other row: types, UTF-8, control characters, list items,
    matching locality question / answer counts."""
    issues: list[Issue] = []
    for name in SCALAR_TEXT:
        v = payload.get(name)
        if v is None:
            continue
        if not isinstance(v, str):
            issues.append(Issue(name, Reason.WRONG_TYPE, f"expected text, got {_type_name(v)}"))
        elif name == "id" and v.strip() and not _SURROGATE.search(v) and (p := id_problem(v)):
            issues.append(Issue("id", Reason(p[0]), p[1]))  # the id policy: schemas/ids.py
        elif (t := _text_issue(name, v)):
            issues.append(t)
    lengths: dict[str, int] = {}
    for name in LIST_TEXT:
        v = payload.get(name)
        if v is None:
            continue
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list):
            issues.append(Issue(name, Reason.WRONG_TYPE, f"expected text or a list of texts, got {_type_name(v)}"))
            continue
        lengths[name] = len(items)
        for i, item in enumerate(items):
            where = name if isinstance(v, str) else f"{name}[{i}]"
            if not isinstance(item, str):
                issues.append(Issue(where, Reason.WRONG_TYPE, f"expected text, got {_type_name(item)}"))
            elif not item.strip():
                issues.append(Issue(where, Reason.EMPTY_FIELD, "is empty or whitespace-only"))
            elif (t := _text_issue(where, item)):
                issues.append(t)
    sa = payload.get("submitted_at")
    if sa is not None and not isinstance(sa, (str, datetime)):
        issues.append(Issue("submitted_at", Reason.WRONG_TYPE, f"expected an ISO-8601 timestamp, got {_type_name(sa)}"))
    for group in (("loc", "loc_ans"), ("m_loc", "m_loc_q", "m_loc_a")):
        if not any(lengths.get(g) for g in group):
            continue
        counts = {g: lengths.get(g, 0) for g in group}  # an absent partner counts as 0
        if len(set(counts.values())) > 1:
            desc = ", ".join(f"{g}={c}" for g, c in counts.items())
            issues.append(Issue(group[-1], Reason.PROBE_MISMATCH, f"locality probes differ in count ({desc})"))
    return issues


def _image_issues(payload: Mapping[str, Any], checker: ImageChecker) -> list[Issue]:
    issues = []
    targets: list[tuple[str, str]] = []
    if isinstance(payload.get("image"), str) and payload["image"].strip():
        targets.append(("image", payload["image"].strip()))
    for name in IMAGE_LISTS:
        v = payload.get(name)
        items = [v] if isinstance(v, str) else (v or [])
        targets += [(name if isinstance(v, str) else f"{name}[{i}]", p.strip()) for i, p in enumerate(items)
                    if isinstance(p, str) and p.strip()]
    for where, path in targets:
        problem = checker.check(path)
        if problem:
            issues.append(Issue(where, problem.reason, problem.message))
    return issues


def _m_loc_same_image(payload: Mapping[str, Any], checker: ImageChecker) -> list[Issue]:
    """An m_loc probe whose image has the edit image's CONTENT is about the edit's subject."""
    edit = payload.get("image")
    own = checker.content_hash(edit.strip()) if isinstance(edit, str) and edit.strip() else None
    if own is None:
        return []
    items = payload.get("m_loc")
    items = [items] if isinstance(items, str) else (items or [])
    for i, p in enumerate(items):
        if isinstance(p, str) and p.strip() and checker.content_hash(p.strip()) == own:
            return [Issue(f"m_loc[{i}]", Reason.LOCALITY_OVERLAPS_SUBJECT,
                          "a multimodal locality probe shows the edit image itself (same content)")]
    return []


_PYDANTIC_REASONS = {
    "missing": Reason.MISSING_FIELD,
    "string_too_short": Reason.EMPTY_FIELD,
    "string_type": Reason.WRONG_TYPE,
    "list_type": Reason.WRONG_TYPE,
}


_PYDANTIC_ID_REASONS = {"string_pattern_mismatch": Reason.INVALID_ID_CHARS, "string_too_long": Reason.ID_TOO_LONG}


def _pydantic_issues(exc: ValidationError) -> list[Issue]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or None
        reasons = _PYDANTIC_ID_REASONS if loc == "id" else {}
        reason = reasons.get(err["type"]) or _PYDANTIC_REASONS.get(err["type"], Reason.INVALID_VALUE)
        out.append(Issue(loc, reason, err["msg"]))
    return out


def _message(row: RawRow, issue: Issue) -> str:
    # display_id: quoted, newlines / markup-looking text escaped, very long ids shortened
    where = f"row {display_id(row.row_id)}" + (f" ({row.ref})" if row.ref != row.row_id else "")
    if issue.field:
        where += f", field {issue.field!r}"
    return f"{where}: {issue.message}"


def _load_rows(rows_or_path, read_limits: ReadLimits | None = None) -> tuple[list[RawRow], str, str | None]:
    if isinstance(rows_or_path, (str, Path)):
        path = Path(rows_or_path)
        return read_batch(path, read_limits), path.stem, str(path)
    if isinstance(rows_or_path, Iterable) and not isinstance(rows_or_path, (bytes, Mapping)):
        return read_records(list(rows_or_path)), "rows", None
    raise BatchError(f"cannot validate a {type(rows_or_path).__name__}; give a path or a list of rows")


def validate_batch(
    rows_or_path: str | Path | Sequence[Mapping[str, Any]],
    image_roots: Sequence[str | Path] = (),
    limits: ValidationLimits | None = None,
    out_dir: str | Path | None = None,
    check_images: bool = True,
    batch_id: str | None = None,
    read_limits: ReadLimits | None = None,
) -> ValidationResult:
    """Validate a batch file (JSONL / Parquet / MMEdit JSON) or in-memory rows.

    Raises `BatchError` (with a clear message) only when the batch as a whole cannot be
    validated: unreadable or unsupported file, or no rows at all. Everything else is a
    per-row rejection. `check_images=False` skips the file system (only lexical path checks).
    `read_limits`: file / line caps and symlink following (default: `ReadLimits.from_env()`).
    """
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    limits = limits or ValidationLimits()
    phases: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        phases[name] = round(now - tick, 4)
        tick = now

    raw, default_id, source = _load_rows(rows_or_path, read_limits)
    lap("read")
    batch_id = batch_id or default_id
    if not raw:
        raise EmptyBatchError(f"{source or 'batch'}: the batch is empty (no rows to validate)")

    issues: dict[int, list[Issue]] = {r.index: list(r.issues) for r in raw}
    for r in raw:
        if not issues[r.index] and isinstance(r.payload, Mapping):
            issues[r.index].extend(row_issues(r.payload))
    lap("row_checks")

    # The table: rows that are well-formed objects with well-typed fields.
    from odedit.requests.gx_suite import build_table, run_suite

    table_rows = [(r.index, r.payload) for r in raw if not issues[r.index]]
    df = build_table(table_rows, limits)
    lap("table")
    outcome = run_suite(df, limits, scope="row")
    lap("gx_suite")
    for idx, found in outcome.issues.items():
        issues[idx].extend(found)

    if table_rows:
        checker = ImageChecker(image_roots, limits.max_image_bytes, limits.max_image_pixels, decode=check_images)
        for idx, payload in table_rows:
            issues[idx].extend(_image_issues(payload, checker))
            if not issues[idx]:
                issues[idx].extend(_m_loc_same_image(payload, checker))
    lap("images")

    # Cross-row checks (duplicate ids / requests, contradictions) only among rows that passed
    # every per-row check: a broken row neither blames nor shields a good one.
    passing = [idx for idx, _ in table_rows if not issues[idx]]
    if passing:
        cross = run_suite(df[df["_row"].isin(passing)], limits, suite_name="odedit_edit_batch_cross", scope="cross")
        for idx, found in cross.issues.items():
            issues[idx].extend(found)
        outcome = type(outcome)(outcome.success and cross.success,
                                {**outcome.result, "success": outcome.success and cross.success,
                                 "results": list(outcome.result.get("results", [])) + list(cross.result.get("results", []))},
                                outcome.issues)
    lap("cross_row")

    accepted: list[EditRequest] = []
    rejected: list[RejectedRow] = []
    for r in raw:
        found = issues[r.index]
        if not found:
            try:
                accepted.append(EditRequest.model_validate(r.payload))
                continue
            except ValidationError as exc:  # what the model refuses that the checks above did not see
                found = _pydantic_issues(exc)
        first = found[0]
        rejected.append(RejectedRow(
            row_id=r.row_id, row_index=r.index, source=r.ref, field=first.field, reason=str(first.reason),
            message=_message(r, first),
            issues=[RowIssue(field=i.field, reason=str(i.reason), message=_message(r, i)) for i in found],
            payload=r.original,
        ))

    lap("model")
    report = ValidationReport(
        batch_id=batch_id, source=source, rows_in=len(raw), accepted=len(accepted), rejected=len(rejected),
        rejected_by_reason=dict(Counter(x.reason for x in rejected).most_common()),
        issues_by_reason=dict(Counter(i.reason for x in rejected for i in x.issues).most_common()),
        gx_success=outcome.success, limits=limits.to_dict(), images_checked=check_images,
        started_at=started, duration_s=round(time.perf_counter() - t0, 4), phases_s=phases,
    )
    assert report.rows_in == report.accepted + report.rejected  # quarantine, not loss
    result = ValidationResult(accepted, rejected, report, outcome.result)
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


QUARANTINE_COLUMNS = ("row_id", "row_index", "source", "field", "reason", "message", "issues", "payload")


def write_quarantine(rejected: Sequence[RejectedRow], path: Path) -> Path:
    """Rejected rows as parquet: one row per rejected input row; `issues` and `payload` are
    JSON strings (the payload exactly as read, ready to fix and resubmit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("row_id", pa.string()), ("row_index", pa.int64()), ("source", pa.string()),
                        ("field", pa.string()), ("reason", pa.string()), ("message", pa.string()),
                        ("issues", pa.string()), ("payload", pa.string())])
    cols: dict[str, list] = {c: [] for c in QUARANTINE_COLUMNS}
    for x in rejected:
        d = x.model_dump()
        d["issues"] = json.dumps(d["issues"], ensure_ascii=True)
        for c in QUARANTINE_COLUMNS:
            v = d[c]
            cols[c].append(v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(v, str) else v)
    pq.write_table(pa.table(cols, schema=schema), path)
    return path


def write_outputs(result: ValidationResult, out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "quarantine": out_dir / QUARANTINE_FILE,
        "accepted": out_dir / ACCEPTED_FILE,
        "gx_result": out_dir / GX_RESULT_FILE,
        "report": out_dir / REPORT_FILE,
    }
    write_quarantine(result.rejected, paths["quarantine"])
    with paths["accepted"].open("w", encoding="utf-8") as f:
        for req in result.accepted:
            f.write(req.model_dump_json(exclude_none=True) + "\n")
    paths["gx_result"].write_text(json.dumps(result.gx_result, indent=1, default=str), encoding="utf-8")
    result.report.artifacts = {k: str(v) for k, v in paths.items()}
    paths["report"].write_text(result.report.model_dump_json(indent=2), encoding="utf-8")
    return result.report.artifacts
