"""Export the JSON Schema of the request models into `schemas/*.schema.json`.

    python -m schemas.export            # (re)write the files
    python -m schemas.export --check    # exit 1 if a file is out of date

This module owns the mapping model -> file name; `tests/test_schemas.py` asserts the
checked-in files equal what it produces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.batch import EditBatch, RejectedRow, ValidationReport
from schemas.request import EditRequest

SCHEMA_DIR = Path(__file__).resolve().parent

EXPORTS: dict[str, type[BaseModel]] = {
    "edit_request.schema.json": EditRequest,
    "edit_batch.schema.json": EditBatch,
    "rejected_row.schema.json": RejectedRow,
    "validation_report.schema.json": ValidationReport,
}


def render(model: type[BaseModel]) -> str:
    """The schema text exactly as it is checked in (sorted keys, trailing newline)."""
    schema = model.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the files that are missing or differ from the models."""
    out = []
    for name, model in EXPORTS.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(model):
            out.append(name)
    return out


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in EXPORTS.items():
        path = directory / name
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SCHEMA_DIR)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        for name in bad:
            print(f"out of date: {args.out / name} (run `python -m schemas.export`)")
        return 1 if bad else 0
    for path in export(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
