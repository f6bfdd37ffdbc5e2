"""Readers for request batches: JSONL, Parquet, and MMEdit E-VQA / E-IC JSON (as distributed
for EasyEdit), plus in-memory lists of dicts.

This module owns turning a file into `RawRow`s: each keeps its position, a human reference
(`file:line`), the parsed payload (or None) and the ORIGINAL payload text, so nothing is lost
on the way to quarantine. Row-level problems (a bad JSONL line, a non-object record, invalid
UTF-8, a line over the per-line cap) become `Issue`s on that row; only a file that cannot be
read at all raises `BatchError`.

Reads are bounded (`ReadLimits`): a file over `max_file_bytes` (env `ODEDIT_MAX_BATCH_BYTES`,
default 64 MiB) is refused before anything is read (`BatchTooLarge`); JSONL is streamed line
by line and a line over `max_line_bytes` (env `ODEDIT_MAX_LINE_BYTES`, default 1 MiB) is
skipped in chunks, never held whole, and becomes a `line_too_long` row keeping its first 4 KiB.
Only regular files are read (no FIFOs, devices or directories); with
`follow_symlinks=False` a symlink is refused without opening its target (the inbox uses this).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from odedit.requests.reasons import Issue, Reason

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
JSON_SUFFIXES = {".json"}
SUPPORTED_SUFFIXES = JSONL_SUFFIXES | PARQUET_SUFFIXES | JSON_SUFFIXES

# Keys of an MMEdit E-VQA / E-IC record as EasyEdit reads them.
MMEDIT_KEYS = ("src", "pred", "rephrase", "alt", "image", "image_rephrase",
               "loc", "loc_ans", "m_loc", "m_loc_q", "m_loc_a")

_SURROGATE = re.compile("[\ud800-\udfff]")

ENV_MAX_BATCH_BYTES = "ODEDIT_MAX_BATCH_BYTES"
ENV_MAX_LINE_BYTES = "ODEDIT_MAX_LINE_BYTES"
DEFAULT_MAX_BATCH_BYTES = 64 * 2**20
DEFAULT_MAX_LINE_BYTES = 2**20
KEEP_OF_LONG_LINE = 4096  # bytes of an over-long line kept as its quarantined payload


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"${name} must be a whole number of bytes, got {value!r}") from None


@dataclass(frozen=True)
class ReadLimits:
    """How much of a batch file is read: the file size cap, the per-line cap (JSONL), and
    whether a symlinked file is followed."""

    max_file_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    follow_symlinks: bool = True

    @classmethod
    def from_env(cls, **overrides) -> "ReadLimits":
        base = cls(max_file_bytes=_env_int(ENV_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_BYTES),
                   max_line_bytes=_env_int(ENV_MAX_LINE_BYTES, DEFAULT_MAX_LINE_BYTES))
        return cls(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


class BatchError(ValueError):
    """The batch as a whole cannot be validated (unreadable, unsupported, empty)."""


class BatchReadError(BatchError):
    pass


class UnsupportedBatchFormat(BatchError):
    pass


class EmptyBatchError(BatchError):
    pass


class BatchTooLarge(BatchReadError):
    """The file is over the size cap (`ReadLimits.max_file_bytes`)."""


class NotARegularFile(BatchReadError):
    """A symlink (when not followed), FIFO, device or directory where a batch file was expected."""


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


def open_batch_file(path: str | Path, limits: ReadLimits | None = None) -> BinaryIO:
    """Open a batch file for reading, binary: a regular file within the size cap, opened
    without following a final symlink when `limits.follow_symlinks` is False (O_NOFOLLOW: the
    target is never opened). Raises `BatchReadError` (or a subclass) with a clear message."""
    limits = limits or ReadLimits.from_env()
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not limits.follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BatchReadError(f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not limits.follow_symlinks:
            raise NotARegularFile(f"{path}: is a symlink; symlinks are not followed here") from None
        raise BatchReadError(f"{path}: cannot open ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, socket or device)"
            raise NotARegularFile(f"{path}: is {kind}")
        if st.st_size > limits.max_file_bytes:
            raise BatchTooLarge(f"{path}: {st.st_size} bytes is over the {limits.max_file_bytes}-byte cap "
                                f"(${ENV_MAX_BATCH_BYTES}); split the batch")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _lines(f: BinaryIO, limits: ReadLimits) -> Iterator[tuple[int, bytes, int]]:
    """(line number, bytes, total length) per non-blank line, streamed; a line over the cap is
    consumed in chunks and yielded as only its first KEEP_OF_LONG_LINE bytes (total > cap)."""
    cap = limits.max_line_bytes
    seen = 0
    lineno = 0
    while True:
        line = f.readline(cap + 1)
        if not line:
            return
        lineno += 1
        total = len(line)
        if total > cap and not line.endswith(b"\n"):  # over the cap: skip the rest, keep the head
            head = line[:KEEP_OF_LONG_LINE]
            del line
            while True:
                chunk = f.readline(2**16)
                total += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            line = head
        seen += total
        if seen > limits.max_file_bytes:  # the file grew past the cap while being read
            raise BatchTooLarge(f"{getattr(f, 'name', 'batch')}: over the {limits.max_file_bytes}-byte cap "
                                f"(${ENV_MAX_BATCH_BYTES}) while reading")
        if line.strip():
            yield lineno, line, total


def iter_jsonl(path: Path, limits: ReadLimits | None = None) -> Iterator[RawRow]:
    """JSONL rows one at a time (memory: one line, at most `max_line_bytes`)."""
    limits = limits or ReadLimits.from_env()
    index = 0
    with open_batch_file(path, limits) as f:
        for lineno, raw, total in _lines(f, limits):
            ref = f"{path.name}:{lineno}"
            if total > limits.max_line_bytes:
                text = _decode(raw)
                issue = Issue(None, Reason.LINE_TOO_LONG,
                              f"line has {total} bytes, over the {limits.max_line_bytes}-byte cap "
                              f"(${ENV_MAX_LINE_BYTES}); only its first {len(raw)} bytes are kept")
                yield RawRow(index, ref, None, text, issues=[issue])
                index += 1
                continue
            text = _decode(raw.rstrip(b"\n").rstrip(b"\r"))
            try:
                payload = json.loads(text)
            except json.JSONDecodeError as exc:
                issue = Issue(None, Reason.MALFORMED_ROW, f"not valid JSON ({exc.msg} at column {exc.colno})")
                yield RawRow(index, ref, None, text, issues=[issue])
                index += 1
                continue
            row = RawRow(index, ref, payload, dumps_payload(payload))
            if not isinstance(payload, dict):
                row.issues.append(Issue(None, Reason.MALFORMED_ROW,
                                        f"expected a JSON object, got {type(payload).__name__}"))
            row.issues.extend(_utf8_issues(payload))
            index += 1
            yield row


def read_jsonl(path: Path, limits: ReadLimits | None = None) -> list[RawRow]:
    rows = list(iter_jsonl(path, limits))
    if rows and not any(r.payload is not None for r in rows):
        raise BatchReadError(f"{path}: no line is valid JSON; is this really a JSONL file?")
    return rows


def read_parquet(path: Path, limits: ReadLimits | None = None) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        with open_batch_file(path, limits) as f:
            table = pq.read_table(f)
    except BatchError:
        raise
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


def read_json(path: Path, limits: ReadLimits | None = None) -> list[RawRow]:
    """A JSON list of records (MMEdit E-VQA / E-IC, ids synthesised as `<stem>-<index>` when
    absent, the stem made id-safe) or an object `{"batch_id": ..., "requests": [...]}` (an
    EditBatch)."""
    limits = limits or ReadLimits.from_env()
    with open_batch_file(path, limits) as f:
        data = f.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        raise BatchTooLarge(f"{path}: over the {limits.max_file_bytes}-byte cap (${ENV_MAX_BATCH_BYTES})")
    text = _decode(data)
    del data
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
        row = RawRow(i, ref, rec, dumps_payload(rec), synthetic_id=_synthetic_id(path.stem, i))
        if isinstance(rec, dict):
            if "id" not in rec:  # MMEdit: stable id from file stem and position
                row.payload = {"id": row.synthetic_id, **rec}
        else:
            row.issues.append(Issue(None, Reason.MALFORMED_ROW,
                                    f"expected a JSON object, got {type(rec).__name__}"))
        row.issues.extend(_utf8_issues(rec))
        rows.append(row)
    return rows


def _synthetic_id(stem: str, index: int) -> str:
    """`<stem>-<index>` when that is a valid id (schemas/ids.py), else the stem made safe."""
    from schemas.ids import ID_MAX_LENGTH, is_valid_id

    rid = f"{stem}-{index}"
    if is_valid_id(rid):
        return rid
    suffix = f"-{index}"
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".-") or "batch"
    return clean[:ID_MAX_LENGTH - len(suffix)] + suffix


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


def read_batch(path: str | Path, limits: ReadLimits | None = None) -> list[RawRow]:
    """Read a batch file by its suffix. Raises `BatchError` for a file that cannot be read at
    all; an empty result is returned as-is (the caller decides that empty is an error)."""
    path = Path(path)
    limits = limits or ReadLimits.from_env()
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedBatchFormat(
            f"{path}: unsupported batch file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(path, limits)
    if suffix in PARQUET_SUFFIXES:
        return read_parquet(path, limits)
    return read_json(path, limits)


def inspect_batch(path: str | Path, limits: ReadLimits | None = None) -> int:
    """Check that a batch file can be read, keeping nothing: the number of rows. JSONL is
    streamed (memory: one line); Parquet reads only its footer; JSON is parsed (within the
    size cap). Raises `EmptyBatchError` for no rows, `BatchTooLarge`, `NotARegularFile`,
    `UnsupportedBatchFormat` or `BatchReadError` like `read_batch` would."""
    path = Path(path)
    limits = limits or ReadLimits.from_env()
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        rows = parsed = 0
        for row in iter_jsonl(path, limits):
            rows += 1
            parsed += row.payload is not None
        if rows and not parsed:
            raise BatchReadError(f"{path}: no line is valid JSON; is this really a JSONL file?")
    elif suffix in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        try:
            with open_batch_file(path, limits) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
        except BatchError:
            raise
        except Exception as exc:
            raise BatchReadError(f"{path}: not a readable Parquet file ({exc})") from exc
    else:
        rows = len(read_batch(path, limits))
    if not rows:
        raise EmptyBatchError(f"{path}: the batch is empty (no rows to validate)")
    return rows
