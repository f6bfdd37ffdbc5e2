"""The edit ledger of a registered version (pure: no Prefect, no MLflow).

Every registered version carries its ledger as an artifact: every edit live in its lineage,
self-contained (the images are stored beside it by content hash):

    ledger/ledger.jsonl            one LedgerEntry per line, oldest first
    ledger/images/<sha256>.png     the request images, named by the sha256 of their bytes

An entry holds the request id and hash, the full EditRequest (its `image` and
`image_rephrase` / `m_loc` / `train_image_rephrase` paths rewritten to `images/<sha>.png`,
relative to the ledger directory), the version and batch that introduced it, and its LAST
status as measured on the final model of the version that carries the ledger:

    holds       the model answers the edit's target on its prompt + image
    lost        it does not (and no later edit explains why)
    superseded  a later edit about the same subject (or, without a subject, the same image)
                replaced it: the model answers its prompt with the later edit's target

Version 1 (the base) has an empty ledger. The ledger of a new version = its parent's entries
(statuses re-measured) + the batch's successful edits. An entry whose `version` is None was
introduced by the version that carries the ledger (the version number is only known once it
is registered); `Ledger.extend` fills it in with the parent's number when a child builds on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from schemas.request import EditRequest

LEDGER_FILE = "ledger.jsonl"
IMAGES = "images"
STATUSES = ("holds", "lost", "superseded")
_IMAGE_FIELDS = ("image_rephrase", "m_loc", "train_image_rephrase")


@dataclass
class LedgerEntry:
    request_id: str
    request_hash: str
    request: dict  # EditRequest.model_dump(mode="json"), image paths relative to the ledger dir
    version: str | None = None  # the version that introduced it; None = the version carrying this ledger
    batch_id: str | None = None
    run_id: str | None = None
    status: str = "holds"
    scores: dict = field(default_factory=dict)  # last final-model scores (reliability, ...)
    image_hash: str | None = None  # sha256 of the edit image's bytes

    def to_request(self) -> EditRequest:
        return EditRequest.model_validate(self.request)

    @property
    def subject(self) -> str | None:
        s = self.request.get("subject")
        return s.strip().lower() if s else None

    @property
    def target(self) -> str:
        return self.request["alt"]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Ledger:
    entries: list[LedgerEntry] = field(default_factory=list)
    root: Path | None = None  # the directory it was loaded from (images are relative to it)

    def live_requests(self) -> tuple[list[EditRequest], Path | None]:
        """(requests, image_root) of the edits the model should still serve: every entry not
        superseded by a later edit. Image paths are relative to `image_root`."""
        return [e.to_request() for e in self.live()], self.root

    def live(self) -> list[LedgerEntry]:
        """The entries not superseded by a later edit."""
        return [e for e in self.entries if e.status != "superseded"]

    def holding_hashes(self) -> dict[str, str]:
        """request hash -> request id of the entries whose status is `holds`."""
        return {e.request_hash: e.request_id for e in self.entries if e.status == "holds"}

    def by_id(self) -> dict[str, LedgerEntry]:
        return {e.request_id: e for e in self.entries}

    def extend(self, parent_version: str | None, new: Iterable[LedgerEntry]) -> "Ledger":
        """A child's ledger: copies of these entries (version filled with `parent_version`
        where unset) followed by `new`. Statuses are set by the caller afterwards."""
        out = []
        for e in self.entries:
            d = e.to_dict()
            d["version"] = d["version"] or parent_version
            out.append(LedgerEntry(**d))
        return Ledger(out + list(new), self.root)

    def save(self, directory: str | Path, image_roots: dict[int, Path | None] | None = None) -> Path:
        """Write ledger.jsonl + images/ under `directory` (images copied from this ledger's
        root, or from the entry's own `_image_root` when set by `entry_from_request`)."""
        d = Path(directory)
        (d / IMAGES).mkdir(parents=True, exist_ok=True)
        lines = []
        for e in self.entries:
            src_root = getattr(e, "_image_root", None) or self.root
            for rel in _image_paths(e.request):
                dst = d / rel
                if not dst.is_file() and src_root is not None:
                    dst.write_bytes((Path(src_root) / rel).read_bytes())
            lines.append(json.dumps(e.to_dict(), sort_keys=True))
        (d / LEDGER_FILE).write_text("".join(line + "\n" for line in lines))
        return d


def _image_paths(request: dict) -> list[str]:
    paths = [request["image"]] if request.get("image") else []
    for f in _IMAGE_FIELDS:
        paths += list(request.get(f) or [])
    return paths


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _store_image(path: Path, images: Path) -> str:
    """Copy `path` to images/<sha256><suffix> (once) and return its ledger-relative name."""
    data = path.read_bytes()
    name = hashlib.sha256(data).hexdigest() + (path.suffix.lower() or ".png")
    dst = images / name
    if not dst.is_file():
        dst.write_bytes(data)
    return f"{IMAGES}/{name}"


def entry_from_request(request: EditRequest, request_hash: str, image_root: str | Path | None,
                       store_dir: str | Path, batch_id: str | None = None, run_id: str | None = None,
                       status: str = "holds", scores: dict | None = None) -> LedgerEntry:
    """A ledger entry for `request`: its images are copied into `store_dir`/images/ by content
    hash and the request's paths rewritten to them (so the ledger is self-contained)."""
    images = Path(store_dir) / IMAGES
    images.mkdir(parents=True, exist_ok=True)

    def resolve(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() or image_root is None else Path(image_root) / q

    data = request.model_dump(mode="json")
    data["image"] = _store_image(resolve(request.image), images)
    for f in _IMAGE_FIELDS:
        data[f] = [_store_image(resolve(p), images) for p in getattr(request, f)]
    image_hash = Path(data["image"]).stem
    e = LedgerEntry(request.id, request_hash, data, None, batch_id, run_id, status, dict(scores or {}), image_hash)
    e._image_root = Path(store_dir)  # type: ignore[attr-defined]
    return e


def load_ledger(directory: str | Path | None) -> Ledger:
    """The ledger stored under `directory` (empty when there is none: the base, or a version
    registered before ledgers existed)."""
    if directory is None:
        return Ledger([], None)
    d = Path(directory)
    f = d / LEDGER_FILE
    if not f.is_file():
        return Ledger([], d)
    entries = [LedgerEntry(**json.loads(line)) for line in f.read_text().splitlines() if line.strip()]
    return Ledger(entries, d)


def empty_ledger(directory: str | Path) -> Path:
    return Ledger([], None).save(directory)


# ----------------------------------------------------------------------------- statuses
def same_thing(earlier: LedgerEntry, later: LedgerEntry) -> bool:
    """Whether `later` is about what `earlier` was about: the same subject, or (when either
    has no subject) the same image content."""
    if earlier.subject and later.subject:
        return earlier.subject == later.subject
    return bool(earlier.image_hash) and earlier.image_hash == later.image_hash


def status_of(reliability: float | None, superseded: bool, threshold: float = 0.999) -> str:
    """holds / superseded / lost from the final model's reliability on the edit and whether a
    later edit on the same subject explains its change (`superseded`)."""
    if reliability is not None and reliability >= threshold:
        return "holds"
    return "superseded" if superseded else "lost"


def edited_facts(entries: Sequence[LedgerEntry]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(targets, values) of the facts `entries` changed, by subject (lower case): `targets` holds
    each edit's new answer, `values` its old (`pred`) and new answers (an answer among them,
    about that subject, answers an edited fact). The caller passes the live entries."""
    targets: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    for e in entries:
        if e.subject:
            targets.setdefault(e.subject, set()).add(e.target)
            values.setdefault(e.subject, set()).update(v for v in (e.request.get("pred"), e.target) if v)
    return targets, values
