"""The request schemas: checked-in JSON Schema files equal the models, and the models accept
and refuse what they should."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from schemas import export
from schemas.batch import EditBatch, RejectedRow, ValidationReport
from schemas.request import EditRequest

GOOD = {"id": "r1", "image": "a.png", "src": "What colour is the cube?", "alt": "red",
        "loc": ["what is 2+2?"], "loc_ans": ["4"], "requester": "ana", "ticket": "T-1",
        "submitted_at": "2026-11-24T10:00:00Z"}


def test_checked_in_schema_files_match_models():
    assert export.stale() == [], "run `python -m schemas.export` to regenerate schemas/*.schema.json"


def test_export_check_detects_a_stale_file(tmp_path):
    export.export(tmp_path)
    assert export.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "edit_batch.schema.json").write_text("{}\n")
    assert export.stale(tmp_path) == ["edit_batch.schema.json"]
    assert export.main(["--check", "--out", str(tmp_path)]) == 1


def test_json_schema_accepts_good_and_refuses_bad_request():
    schema = json.loads((export.SCHEMA_DIR / "edit_request.schema.json").read_text())
    jsonschema.validate(GOOD, schema)
    for bad in ({k: v for k, v in GOOD.items() if k != "alt"}, dict(GOOD, alt=""), dict(GOOD, src=5)):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_batch_schema_validates_a_batch():
    schema = json.loads((export.SCHEMA_DIR / "edit_batch.schema.json").read_text())
    jsonschema.validate({"batch_id": "b", "requests": [GOOD]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"batch_id": "b", "requests": []}, schema)


def test_edit_batch_model():
    batch = EditBatch(batch_id="b", requests=[EditRequest.model_validate(GOOD)])
    assert batch.requests[0].loc == ["what is 2+2?"]
    with pytest.raises(ValidationError):
        EditBatch(batch_id="b", requests=[])
    with pytest.raises(ValidationError):
        EditBatch(batch_id="b", requests=[GOOD], extra_field=1)


def test_rejected_row_and_report_models_round_trip():
    row = RejectedRow(row_id="r1", row_index=0, source="b.jsonl:1", field="alt", reason="empty_field",
                      message="row 'r1', field 'alt': is empty", payload=json.dumps(GOOD))
    assert RejectedRow.model_validate_json(row.model_dump_json()) == row
    with pytest.raises(ValidationError):
        RejectedRow(row_id="r", row_index=-1, source="s", reason="x", message="m", payload="{}")
    rep = ValidationReport(batch_id="b", rows_in=2, accepted=1, rejected=1, started_at="2026-11-24T10:00:00Z",
                           duration_s=0.1)
    assert ValidationReport.model_validate_json(rep.model_dump_json()) == rep
