"""The ONE request-id policy, and the safe forms of an id for places that must never be
steered by it (file names, metric keys, log lines, terminal output).

A request id is 1-128 characters of `A-Z a-z 0-9 . _ -`, and does not start with `.` or `-`
(so `.`, `..`, hidden names and option-like names are impossible). Validation
(`odedit.requests.validate`) rejects any other id with `invalid_id_chars` or `id_too_long`;
`EditRequest.id` carries the same pattern, so the exported JSON Schema says it too.

Everything that turns an id into a path, key or line still goes through `safe_id` /
`display_id`, defensively: an id that passes the policy maps to itself, any other string to
a sanitised prefix plus a hash of the whole id (injective in practice, and never equal to a
valid id because the separator is outside the id alphabet).

Plain functions over `re` and `hashlib` only: no library imports, no I/O.
"""

from __future__ import annotations

import hashlib
import re

ID_MAX_LENGTH = 128
ID_ALPHABET = "A-Za-z0-9._-"
# First character: not "." or "-"; then up to 127 of the alphabet. (No look-arounds: the same
# pattern works in pydantic's Rust regex engine and in JSON Schema validators.)
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"

_VALID = re.compile(ID_PATTERN)
_BAD_CHAR = re.compile(f"[^{ID_ALPHABET}]")

# Problems an id can have, as (code, message); the codes are odedit.requests.reasons.Reason values.
INVALID_ID_CHARS = "invalid_id_chars"
ID_TOO_LONG = "id_too_long"


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _VALID.fullmatch(value) is not None


def id_problem(value: str) -> tuple[str, str] | None:
    """Why `value` is not an acceptable request id, as (reason code, message); None if it is."""
    if is_valid_id(value):
        return None
    if len(value) > ID_MAX_LENGTH:
        return ID_TOO_LONG, f"id has {len(value)} characters; at most {ID_MAX_LENGTH} are allowed"
    bad = _BAD_CHAR.search(value)
    if bad:
        return INVALID_ID_CHARS, (f"id contains {bad.group()!r} at position {bad.start()}; "
                                  f"only letters, digits, '.', '_' and '-' are allowed")
    if value in (".", ".."):
        return INVALID_ID_CHARS, f"id may not be {value!r}"
    if value[:1] in (".", "-"):
        return INVALID_ID_CHARS, f"id may not start with {value[0]!r}"
    return INVALID_ID_CHARS, "id is empty"  # (empty ids are normally caught as empty_field)


def id_hash(value: object, n: int = 12) -> str:
    text = value if isinstance(value, str) else repr(value)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def safe_id(value: object, sep: str = "~", max_prefix: int = 64) -> str:
    """A name that is safe as ONE path component / metric-key segment: a valid id maps to
    itself; anything else to `<sanitised prefix><sep><hash of the whole value>`. `sep` must
    lie outside the id alphabet (`~` for file names, `/` for MLflow metric keys), so the
    result never equals a valid id and two different values never share a name (up to the
    hash). The result is never empty, never `.`/`..` and never starts with `.` or `-`."""
    if is_valid_id(value):
        return value  # type: ignore[return-value]
    if _BAD_CHAR.search(sep) is None:
        raise ValueError(f"separator {sep!r} must lie outside the id alphabet")
    text = value if isinstance(value, str) else repr(value)
    prefix = _BAD_CHAR.sub("_", text)[:max_prefix].lstrip(".-") or "id"
    return f"{prefix}{sep}{id_hash(value)}"


def display_id(value: object, limit: int = 80) -> str:
    """`repr` of an id for log lines and messages: quotes it, escapes newlines and control
    characters, and shortens very long ids (keeping a hash of the whole)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    tail = f"...[{len(str(value))} chars, #{id_hash(value, 8)}]"
    return text[:max(8, limit - len(tail))] + tail
