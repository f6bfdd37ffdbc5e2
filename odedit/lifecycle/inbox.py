"""The inbox drained by the scheduled batch (`flows/inbox_drain.py`). Nothing is ever deleted.

    inbox/
      NAME/                   a batch folder (recommended): exactly one request file at its top
                              level (any name below) and the images it references, paths
                              relative to the folder (sub-folders allowed); it travels whole
                              to done/ or quarantine/
      NAME.ready              optional marker beside the folder: "NAME/ is complete, take it now"
      NAME.jsonl | .ndjson | .parquet | .pq | .json   a request file (its images beside it)
      NAME.jsonl.ready        optional marker: "NAME.jsonl is complete, take it now"
      done/                   the batch finished: every accepted request is registered (or was already)
      quarantine/             never retried; each file with NAME.reason.json saying why:
                                symlink, not_regular_file, invalid_name, empty, too_large, unreadable,
                                unsupported (refused before any edit), rejected (validation refused every row),
                                gate-failed
                              and STEM.rejected.parquet: the rows validation refused, one per row,
                              with reason codes and original payloads (also for files in done/)
    (stays in inbox/)         not ready yet, or its batch did not reach a final state (an edit
                              diverged or did not take, the registry was down, the process was
                              killed): next run. A batch that ran to its end but left edits
                              pending is retried at most $ODEDIT_INBOX_MAX_ATTEMPTS times (default
                              3; NAME.attempts.json counts them), then quarantined with reason
                              `pending-after-retries` (its registered edits stay registered)

A folder is a batch folder when a request file lies at its top level (one without any is left
alone: e.g. the images of flat request files). It is ready by its marker or when nothing in it
(the folder and every entry below it) changed for `settle_s`. A batch folder holding a symlink
anywhere, more than one request file at its top level, or with a name that is not a valid id,
goes to quarantine/ whole (reasons `symlink`, `invalid_folder`, `invalid_name`).

Readiness: a request file is taken when a regular file `NAME.ready` exists beside it, OR when
nothing changed it for `settle_s` seconds (env ODEDIT_INBOX_SETTLE_S, default 30): its
newest timestamp, max(mtime, ctime), is at least `settle_s` old, and its size and mtime are
the same when it is checked as when it was listed (ctime moves on every write, rename and
utime, so a copy that restores an old mtime is still waited for). Writers that need longer
should write NAME.jsonl.part (ignored) and rename it, or write the marker last.

Safety: entries are listed with lstat. A symlink (file or directory) is never followed: it is
moved, as a link, to quarantine/ (reason `symlink`), its target never opened. Request files
are opened with O_NOFOLLOW, must be regular files, are size-capped (`max_bytes`, env
ODEDIT_MAX_BATCH_BYTES, default 64 MiB) before anything is read, must have a name whose stem
follows the id policy (it becomes the batch id, the run name and a work directory: reason
`invalid_name` otherwise), and are checked by streaming
(`odedit.requests.io.inspect_batch`: one line in memory at a time). Other entries (images,
notes, `*.part`) are left alone; a sub-directory holding a request file is a batch folder (above). `done/` and `quarantine/` are created up
front and must be real directories.

Residual window (documented, not closed): the edit-batch flow re-opens the file by path to
validate it (`odedit.lifecycle.batch.validate`, which follows symlinks); a file swapped for a
symlink between the pre-flight check and that read would be read. Only the inbox owner can
do that; closing it needs `batch.validate` to pass `read_limits=ReadLimits(follow_symlinks=False)`
to `validate_batch` (a one-line change in a file another engineer owns).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from schemas.ids import display_id, is_valid_id

SUFFIXES = {".jsonl", ".ndjson", ".parquet", ".pq", ".json"}
SUBDIRS = ("done", "quarantine")
MARKER = ".ready"
REASON_SUFFIX = ".reason.json"
ATTEMPTS_SUFFIX = ".attempts.json"  # beside a request file / folder: runs that left edits pending
ENV_MAX_ATTEMPTS = "ODEDIT_INBOX_MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 3
PENDING = "pending-after-retries"  # quarantine reason: edits still pending after the last attempt
ENV_SETTLE = "ODEDIT_INBOX_SETTLE_S"
DEFAULT_SETTLE_S = 30.0

# Reasons a file is quarantined without being edited (the reason file's `reason`).
SYMLINK = "symlink"
NOT_REGULAR = "not_regular_file"
EMPTY = "empty"
TOO_LARGE = "too_large"
UNREADABLE = "unreadable"
UNSUPPORTED = "unsupported"
INVALID_NAME = "invalid_name"  # the file name's stem is not a valid id (it becomes the batch id, run name, work dir)
INVALID_FOLDER = "invalid_folder"  # a batch folder with more than one request file at its top level
REJECTED = "rejected"  # every row refused by validation


class InboxError(RuntimeError):
    """The inbox itself is unusable (e.g. done/ or quarantine/ is a symlink or a file)."""


@dataclass(frozen=True)
class Candidate:
    """A request file as listed (lstat): taken only if it is still the same when checked."""

    path: Path
    size: int
    mtime_ns: int
    marker: Path | None = None  # NAME.ready, when that is why it is ready
    folder: Path | None = None  # the batch folder `path` is in (moved whole), None for a flat file

    @property
    def entry(self) -> Path:
        """What moves to done/ or quarantine/: the batch folder, or the file itself."""
        return self.folder or self.path


@dataclass
class Scan:
    ready: list[Candidate] = field(default_factory=list)
    waiting: list[Path] = field(default_factory=list)  # being written (or not settled yet)
    refused: list[tuple[Path, str, str]] = field(default_factory=list)  # (path, reason, detail)


def settle_seconds(value: float | None = None) -> float:
    if value is not None:
        return float(value)
    raw = os.environ.get(ENV_SETTLE, "").strip()
    try:
        return float(raw) if raw else DEFAULT_SETTLE_S
    except ValueError:
        raise ValueError(f"${ENV_SETTLE} must be a number of seconds, got {raw!r}") from None


def layout(inbox: str | Path) -> tuple[Path, Path]:
    """Create inbox/, done/ and quarantine/ (before anything is moved); refuse a done/ or
    quarantine/ that is a symlink or not a directory."""
    d = Path(inbox)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SUBDIRS:
        sub = d / name
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
            raise InboxError(f"{sub} must be a real directory (found a symlink or a file); refusing to drain")
        sub.mkdir(exist_ok=True)
        out.append(sub)
    return out[0], out[1]


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def scan(inbox: str | Path, settle_s: float | None = None, now: float | None = None) -> Scan:
    """Sort the inbox's top-level entries, reading no file: `ready` request files,
    `waiting` ones (changed within `settle_s`, no marker), and `refused` entries (symlinks,
    non-regular request files) that go to quarantine. Everything else is left alone."""
    d = Path(inbox)
    settle = settle_seconds(settle_s)
    now = time.time() if now is None else now
    out = Scan()
    with os.scandir(d) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        path = d / e.name
        if e.name in SUBDIRS and not e.is_symlink():
            continue
        if not e.is_symlink() and e.is_dir(follow_symlinks=False):
            _scan_folder(path, settle, now, out)
            continue
        if e.is_symlink():
            try:
                detail = f"symlink to {os.readlink(path)!r} (not followed)"
            except OSError:
                detail = "symlink (not followed)"
            out.refused.append((path, SYMLINK, detail))
            continue
        if not is_request_name(e.name):
            continue  # markers, images, notes, partial uploads: not request files
        st = e.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            out.refused.append((path, NOT_REGULAR, "not a regular file (directory, FIFO, socket or device)"))
            continue
        if not is_valid_id(Path(e.name).stem):
            out.refused.append((path, INVALID_NAME, "the name before the suffix must follow the id policy "
                                "(1-128 of A-Z a-z 0-9 . _ -, not starting with '.' or '-'); rename and resubmit"))
            continue
        marker = d / (e.name + MARKER)
        has_marker = _is_regular_file(marker)
        if has_marker or now - max(st.st_mtime, st.st_ctime) >= settle:
            out.ready.append(Candidate(path, st.st_size, st.st_mtime_ns, marker if has_marker else None))
        else:
            out.waiting.append(path)
    return out


def is_request_name(name: str) -> bool:
    """A request file's name: a request suffix, and not one of the inbox's own side files."""
    return Path(name).suffix.lower() in SUFFIXES and not name.endswith((MARKER, REASON_SUFFIX, ATTEMPTS_SUFFIX))


def _folder_state(folder: Path) -> tuple[float, list[Path], list[Path]]:
    """(newest change time of the folder or anything below it, symlinks found, request files at
    its top level); never follows a link."""
    newest, links, requests = 0.0, [], []
    for root, dirs, files in os.walk(folder, followlinks=False):
        st = os.lstat(root)
        newest = max(newest, st.st_mtime, st.st_ctime)
        for name in dirs + files:
            q = Path(root) / name
            st = os.lstat(q)
            newest = max(newest, st.st_mtime, st.st_ctime)
            if stat.S_ISLNK(st.st_mode):
                links.append(q)
            elif Path(root) == folder and name in files and is_request_name(name):
                requests.append(q)
    return newest, links, requests


def _scan_folder(folder: Path, settle: float, now: float, out: Scan) -> None:
    """A batch folder: ready (its one request file), waiting, or refused whole. A folder with no
    request file at its top level is not a batch (e.g. the images of flat request files): left alone."""
    try:
        newest, links, requests = _folder_state(folder)
    except OSError as exc:
        out.refused.append((folder, UNREADABLE, f"cannot list the batch folder: {exc}"))
        return
    if not requests:
        return
    if not is_valid_id(folder.name):
        out.refused.append((folder, INVALID_NAME, "a batch folder's name must follow the id policy "
                            "(1-128 of A-Z a-z 0-9 . _ -, not starting with '.' or '-'); rename and resubmit"))
        return
    if links:
        out.refused.append((folder, SYMLINK, f"the batch folder holds a symlink ({links[0].relative_to(folder)}); "
                            "links are never followed"))
        return
    marker = folder.with_name(folder.name + MARKER)
    has_marker = _is_regular_file(marker)
    if not has_marker and now - newest < settle:
        out.waiting.append(folder)
        return
    if len(requests) != 1:
        out.refused.append((folder, INVALID_FOLDER, f"a batch folder needs exactly one request file "
                            f"({', '.join(sorted(SUFFIXES))}) at its top level; found {len(requests)}"))
        return
    st = os.lstat(requests[0])
    if not stat.S_ISREG(st.st_mode):
        out.refused.append((folder, NOT_REGULAR, f"{requests[0].name} is not a regular file"))
        return
    out.ready.append(Candidate(requests[0], st.st_size, st.st_mtime_ns, marker if has_marker else None, folder))


def _unchanged(c: Candidate) -> bool:
    try:
        st = os.lstat(c.path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (c.size, c.mtime_ns)


WAIT = "wait"


def preflight(c: Candidate, max_bytes: int | None = None) -> tuple[str, str] | None:
    """Check a ready file without following links and keeping nothing in memory. None: go
    ahead; (WAIT, why): it changed since it was listed, leave it; (reason, message): quarantine."""
    from odedit.requests import io

    if not _unchanged(c):
        return WAIT, "changed or replaced since it was listed"
    limits = io.ReadLimits.from_env(max_file_bytes=max_bytes, follow_symlinks=False)
    if c.size > limits.max_file_bytes:  # decided from lstat: nothing is opened
        return TOO_LARGE, f"{c.size} bytes is over the {limits.max_file_bytes}-byte cap"
    try:
        io.inspect_batch(c.path, limits)
    except io.BatchTooLarge as exc:
        return TOO_LARGE, str(exc)
    except io.NotARegularFile as exc:
        return (SYMLINK if c.path.is_symlink() else NOT_REGULAR), str(exc)
    except io.EmptyBatchError as exc:
        return EMPTY, str(exc)
    except io.UnsupportedBatchFormat as exc:
        return UNSUPPORTED, str(exc)
    except io.BatchError as exc:
        return UNREADABLE, str(exc)
    if not _unchanged(c):
        return WAIT, "changed while it was checked"
    return None


def batch_status(result: dict) -> str:
    """The final word on a batch result: `rejected` when validation refused every row."""
    if not result.get("accepted") and result.get("rejected") and result.get("status") in (None, "nothing-to-do"):
        return REJECTED
    return result.get("status") or "error"


def disposition(result: dict) -> str:
    """Where a processed file goes, from an edit_batch result: done | quarantine | keep."""
    status = batch_status(result)
    if status in ("gate-failed", REJECTED):
        return "quarantine"
    if result.get("pending") or status in ("error", "failed"):
        return "keep"
    return "done"


def max_attempts(value: int | None = None) -> int:
    if value is not None:
        return int(value)
    raw = os.environ.get(ENV_MAX_ATTEMPTS, "").strip()
    return int(raw) if raw else DEFAULT_MAX_ATTEMPTS


def _count_attempt(entry: Path, result: dict) -> int:
    """Record one more run of `entry` that finished with edits pending (diverged / unreached:
    deterministic, they fail the same way again); returns the count so far."""
    f = entry.with_name(entry.name + ATTEMPTS_SUFFIX)
    seen = json.loads(f.read_text()) if f.is_file() else []
    seen.append({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": result.get("run_id"),
                 "version": result.get("version"), "pending": result.get("pending")})
    f.write_text(json.dumps(seen, indent=2, default=str))
    return len(seen)


def _free_name(dest_dir: Path, name: str) -> Path:
    dest = dest_dir / name
    if os.path.lexists(dest) or os.path.lexists(dest_dir / (name + REASON_SUFFIX)):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        p = Path(name)
        dest = dest_dir / f"{p.stem}.{stamp}{p.suffix}"
    return dest


def write_reason(dest: Path, reason: dict) -> Path:
    out = dest.with_name(dest.name + REASON_SUFFIX)
    out.write_text(json.dumps(reason, indent=2, default=str, ensure_ascii=True))
    return out


def move(path: str | Path, where: str, reason: dict | None = None, inbox: str | Path | None = None) -> Path:
    """Move `path` into inbox/`where` (done or quarantine; the inbox defaults to the file's
    directory), never overwriting, never following a symlink (a link moves as a link)."""
    path = Path(path)
    dest_dir = Path(inbox or path.parent) / where
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = _free_name(dest_dir, path.name)
    os.rename(path, dest)  # same file system (a sub-directory); renames the entry, not a target
    if reason is not None:
        write_reason(dest, {"file": path.name, **reason,
                            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return dest


def quarantine(path: Path, reason: str, detail: str, inbox: str | Path, **extra) -> Path:
    """Move a file (or link) to quarantine/ with its reason file; its marker goes along."""
    dest = move(path, "quarantine", {"reason": reason, "detail": detail, **extra}, inbox)
    _move_marker(path, dest)
    return dest


def _move_marker(path: Path, dest: Path) -> None:
    marker = path.with_name(path.name + MARKER)
    if _is_regular_file(marker):
        os.rename(marker, dest.with_name(dest.name + MARKER))


def keep_rejected(parquet: str | Path, inbox: str | Path, stem: str) -> Path:
    """Copy the validator's quarantine.parquet (rejected rows with reason codes and payloads)
    to quarantine/STEM.rejected.parquet."""
    dest = _free_name(Path(inbox) / "quarantine", f"{stem}.rejected.parquet")
    shutil.copyfile(parquet, dest)
    return dest


def finish(c: Candidate | Path, result: dict, inbox: str | Path, attempts: int | None = None) -> dict:
    """Record a batch's final state and move its file: done/, quarantine/ (with a reason
    file), or nowhere (`keep`: not final, retried next run). Rejected rows are kept under
    quarantine/ whenever the file moves. Returns `result` with `status`, `moved_to`,
    `rejected_rows`."""
    path = c.entry if isinstance(c, Candidate) else Path(c)
    result["status"] = batch_status(result)
    where = disposition(result)
    result["moved_to"] = None
    limit = max_attempts(attempts)
    if where == "keep" and result["status"] not in ("error", "failed") and result.get("pending"):
        # the batch ran to the end and left edits pending: retried at most `limit` times in all
        result["attempts"] = _count_attempt(path, result)
        if result["attempts"] >= limit:
            where = "quarantine"
    if where == "keep":
        return result
    reason = None
    if where == "quarantine":
        why = PENDING if result.get("attempts", 0) >= limit and result.get("pending") else result["status"]
        reason = {"reason": why, "status": result["status"], "accepted": result.get("accepted"),
                  "rejected": result.get("rejected"), "gate": result.get("gate"), "run_id": result.get("run_id"),
                  "pending": result.get("pending"), "attempts": result.get("attempts")}
    dest = move(path, where, reason, inbox)
    _move_marker(path, dest)
    tries = path.with_name(path.name + ATTEMPTS_SUFFIX)
    if tries.is_file():
        os.rename(tries, dest.with_name(dest.name + ATTEMPTS_SUFFIX))
    result["moved_to"] = str(dest)
    q = Path(result["work_dir"]) / "validation" / "quarantine.parquet" if result.get("work_dir") else None
    if result.get("rejected") and q is not None and q.is_file():
        result["rejected_rows"] = str(keep_rejected(q, inbox, path.stem))
    return result


def drain(inbox: str | Path, run_batch: Callable[[str], dict], settle_s: float | None = None,
          max_bytes: int | None = None, log: logging.Logger | None = None) -> list[dict]:
    """Drain the inbox once: refuse what must not be read, leave what is being written, run
    `run_batch(path)` on each ready file, then move it by its batch's final state. One
    result dict per file considered (status: quarantined | waiting | error | the batch's)."""
    from odedit.requests.io import BatchError, BatchTooLarge

    log = log or logging.getLogger("odedit.inbox")
    d = Path(inbox)
    layout(d)
    found = scan(d, settle_s)
    results: list[dict] = []

    def refuse(path: Path, reason: str, detail: str) -> None:
        dest = quarantine(path, reason, detail, d)
        log.warning("inbox: %s quarantined (%s): %s", display_id(path.name), reason, display_id(detail, 200))
        results.append({"source": str(path), "status": "quarantined", "reason": reason, "detail": detail,
                        "moved_to": str(dest)})

    for path, reason, detail in found.refused:
        refuse(path, reason, detail)
    for path in found.waiting:
        log.info("inbox: %s is still being written (changed within the settle time); left", display_id(path.name))
        results.append({"source": str(path), "status": "waiting", "moved_to": None})
    for c in found.ready:
        verdict = preflight(c, max_bytes)
        if verdict and verdict[0] == WAIT:
            log.info("inbox: %s %s; left for the next run", display_id(c.path.name), verdict[1])
            results.append({"source": str(c.path), "status": "waiting", "moved_to": None})
            continue
        if verdict:
            refuse(c.entry, *verdict)
            continue
        try:
            res = run_batch(str(c.path))
        except BatchError as exc:  # the file itself cannot be read: final, quarantined once
            refuse(c.entry, TOO_LARGE if isinstance(exc, BatchTooLarge) else UNREADABLE, str(exc))
            continue
        except Exception as exc:  # registry down, killed step...: the file stays for the next run
            log.error("inbox: batch %s failed, left in the inbox: %s", display_id(c.path.name),
                      display_id(str(exc), 300))
            results.append({"source": str(c.path), "status": "error", "error": str(exc), "moved_to": None})
            continue
        res = finish(c, res, d)
        log.info("inbox: %s: %s -> %s", display_id(c.entry.name), res["status"],
                 display_id(res["moved_to"], 300) if res["moved_to"] else "kept")
        results.append(res)
    return results
