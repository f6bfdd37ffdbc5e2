"""Integrity of what a registered version serves (pure: no mlflow here).

A version is registered with sha256 digests of its delta directory, its ledger directory, its
lineage file and its model code file (`registry_model.py` as logged), both as version tags (in
the registry database) and in `integrity.json` beside them in the model artifacts. Loading
checks the artifacts against `integrity.json` (catches corruption: flipped bits, a rescaled or
truncated delta, a deleted `delta.json`); the registry side (`odedit.registry.download_version`,
used by promote and by every batch) checks them against the TAGS, which live outside the
artifact store, so a consistent rewrite of the artifacts and `integrity.json` is caught too.

A directory digest is the sha256 of its manifest: one line per file, sorted by relative POSIX
path, `<relative path>\\0<file sha256>\\n`; renaming, adding or removing a file changes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "integrity.json"
TAG_KEYS = {"delta": "delta_sha256", "ledger": "ledger_sha256", "lineage": "lineage_sha256",
            "code": "code_sha256"}  # manifest key -> version tag suffix (after `odedit.`)


class IntegrityError(RuntimeError):
    """What would be served differs from what was registered (or is not a valid version)."""


def digest_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(path: str | Path) -> list[tuple[str, str]]:
    """(relative POSIX path, file sha256) of every file under `path`, sorted."""
    root = Path(path)
    return sorted((p.relative_to(root).as_posix(), digest_file(p)) for p in root.rglob("*") if p.is_file())


def digest_dir(path: str | Path) -> str:
    """sha256 of the directory's manifest. A missing directory is an error, not an empty digest."""
    root = Path(path)
    if not root.is_dir():
        raise IntegrityError(f"{root} is not a directory")
    h = hashlib.sha256()
    for rel, digest in manifest(root):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def digests(delta_dir: str | Path, ledger_dir: str | Path, lineage_file: str | Path, code_file: str | Path) -> dict:
    return {"delta": digest_dir(delta_dir), "ledger": digest_dir(ledger_dir),
            "lineage": digest_file(lineage_file), "code": digest_file(code_file)}


def write_manifest(path: str | Path, found: dict, kind: str | None, odedit_version: str | None) -> Path:
    p = Path(path)
    p.write_text(json.dumps({"algorithm": "sha256", "kind": kind, "odedit_version": odedit_version, **found},
                            indent=2, sort_keys=True))
    return p


def read_manifest(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise IntegrityError(f"{p.name} is missing: the version cannot be verified")
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise IntegrityError(f"{p.name} is not valid JSON: {exc}") from exc


def compare(expected: dict, found: dict, what: str = "model") -> None:
    """Raise IntegrityError naming every part whose digest differs (or is not recorded)."""
    bad = []
    for key in TAG_KEYS:
        if key not in found:
            continue
        want = expected.get(key)
        if not want:
            bad.append(f"{key} digest not recorded")
        elif want != found[key]:
            bad.append(f"{key} digest mismatch (expected {want[:12]}…, found {found[key][:12]}…)")
    if bad:
        raise IntegrityError(f"{what} " + "; ".join(bad) + ": refusing to serve it")


def check_delta_present(delta_dir: str | Path | None, kind: str | None, what: str = "model") -> None:
    """A version that is not the base (kind `base`) must carry a delta with at least one tensor:
    a missing `delta.json` or an empty delta would otherwise serve the base model as if edited."""
    from odedit.delta import DELTA_META, DELTA_TENSORS

    if kind == "base":
        return
    d = Path(delta_dir) if delta_dir else None
    if d is None or not (d / DELTA_META).is_file():
        raise IntegrityError(f"{what} (kind {kind or 'unknown'}) has no delta ({DELTA_META} missing): refusing "
                             f"to serve the base model as an edited version")
    if not (d / DELTA_TENSORS).is_file():
        raise IntegrityError(f"{what} (kind {kind or 'unknown'}) has no delta tensors ({DELTA_TENSORS} missing)")
    from safetensors import safe_open

    try:
        with safe_open(str(d / DELTA_TENSORS), framework="pt") as f:
            n = len(list(f.keys()))
    except Exception as exc:
        raise IntegrityError(f"{what} delta tensors are unreadable: {exc}") from exc
    if n == 0:
        raise IntegrityError(f"{what} (kind {kind or 'unknown'}) has an empty delta (no tensors): refusing to "
                             f"serve the base model as an edited version")
