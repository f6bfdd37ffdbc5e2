"""Readers: JSONL / Parquet / MMEdit JSON -> raw rows with their original payload; batch-level
errors for files that cannot be read at all."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from odedit.requests.io import (BatchReadError, UnsupportedBatchFormat, read_batch, read_records)
from odedit.requests.reasons import Reason

MMEDIT_RECORD = {
    "src": "What is in the picture?", "pred": "a cat", "rephrase": "What does the image show?",
    "alt": "a dog", "image": "val2014/COCO_1.jpg", "image_rephrase": "val2014/COCO_2.jpg",
    "loc": "nq question: who wrote hamlet", "loc_ans": "shakespeare",
    "m_loc": "val2014/COCO_3.jpg", "m_loc_q": "What colour is the bus?", "m_loc_a": "red",
}


def test_jsonl_rows_keep_position_reference_and_original(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"id": "a", "src": "q"}\n\n{"id": "b"}\n', encoding="utf-8")
    rows = read_batch(p)
    assert [r.index for r in rows] == [0, 1]
    assert [r.ref for r in rows] == ["b.jsonl:1", "b.jsonl:3"]  # blank lines are not rows
    assert [r.row_id for r in rows] == ["a", "b"]
    assert json.loads(rows[0].original) == {"id": "a", "src": "q"}
    assert all(not r.issues for r in rows)


def test_jsonl_bad_line_rejects_only_that_line(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"id": "a"}\n{oops\n[1, 2]\n{"id": "d"}\n', encoding="utf-8")
    rows = read_batch(p)
    assert len(rows) == 4
    assert [r.issues[0].reason for r in rows if r.issues] == [Reason.MALFORMED_ROW, Reason.MALFORMED_ROW]
    assert rows[1].original == "{oops" and rows[1].payload is None
    assert rows[1].row_id == "b.jsonl:2"
    assert "expected a JSON object" in rows[2].issues[0].message


def test_jsonl_invalid_utf8_is_reported_on_its_field(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_bytes(b'{"id": "a", "src": "caf\xe9?", "alt": "ok"}\n')
    (row,) = read_batch(p)
    assert [(i.field, i.reason) for i in row.issues] == [("src", Reason.INVALID_UTF8)]
    assert "\\udce9" in row.original  # the bad byte survives, escaped, in the payload


def test_wholly_unreadable_jsonl_is_a_batch_error(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BatchReadError, match="no line is valid JSON"):
        read_batch(p)


def test_unsupported_batch_type_and_missing_file(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("id,src\n")
    with pytest.raises(UnsupportedBatchFormat, match="unsupported batch file type '.csv'"):
        read_batch(p)
    with pytest.raises(BatchReadError, match="no such file"):
        read_batch(tmp_path / "nope.jsonl")


def test_parquet_rows_lists_and_binary_columns(tmp_path):
    table = pa.table({
        "id": ["a", "b"], "src": ["q1", "q2"], "alt": ["x", None],
        "rephrase": [["r1", "r2"], []],
        "ticket": pa.array([b"T-1", b"\xff\xfe"], type=pa.binary()),
    })
    p = tmp_path / "b.parquet"
    pq.write_table(table, p)
    rows = read_batch(p)
    assert rows[0].payload["rephrase"] == ["r1", "r2"] and rows[0].payload["ticket"] == "T-1"
    assert rows[1].payload["alt"] is None
    assert [(i.field, i.reason) for i in rows[1].issues] == [("ticket", Reason.INVALID_UTF8)]
    assert json.loads(rows[0].original)["id"] == "a"


def test_not_parquet_is_a_batch_error(tmp_path):
    p = tmp_path / "b.parquet"
    p.write_text('{"id": "a"}\n')
    with pytest.raises(BatchReadError, match="not a readable Parquet file"):
        read_batch(p)


def test_mmedit_json_gets_stable_synthetic_ids(tmp_path):
    p = tmp_path / "vqa_eval.json"
    p.write_text(json.dumps([MMEDIT_RECORD, dict(MMEDIT_RECORD, src="Other?")]), encoding="utf-8")
    rows = read_batch(p)
    assert [r.row_id for r in rows] == ["vqa_eval-0", "vqa_eval-1"]
    assert rows[1].payload["id"] == "vqa_eval-1" and rows[1].payload["src"] == "Other?"
    assert "id" not in json.loads(rows[0].original)  # the original stays as submitted
    assert read_batch(p)[1].row_id == "vqa_eval-1"  # stable across reads


def test_mmedit_json_with_non_object_record(tmp_path):
    p = tmp_path / "caption.json"
    p.write_text(json.dumps([MMEDIT_RECORD, "junk"]))
    rows = read_batch(p)
    assert rows[1].issues[0].reason == Reason.MALFORMED_ROW and rows[1].row_id == "caption-1"


def test_json_batch_object_with_requests(tmp_path):
    p = tmp_path / "batch.json"
    p.write_text(json.dumps({"batch_id": "x", "requests": [{"id": "a"}]}))
    assert [r.row_id for r in read_batch(p)] == ["a"]


@pytest.mark.parametrize("text, match", [("{not json", "not valid JSON"), ("42", "expected a JSON list")])
def test_invalid_json_file_is_a_batch_error(tmp_path, text, match):
    p = tmp_path / "b.json"
    p.write_text(text)
    with pytest.raises(BatchReadError, match=match):
        read_batch(p)


def test_in_memory_records():
    rows = read_records([{"id": "a"}, 3])
    assert rows[0].row_id == "a" and rows[1].issues[0].reason == Reason.MALFORMED_ROW


# ----------------------------------------------------------------------------- bounded, streaming reads
MB = 2**20


def _write_big_jsonl(path, total_bytes, line_bytes):
    """A JSONL file of about `total_bytes`, written in chunks (the test itself stays small)."""
    pad = "p" * (line_bytes - 40)
    with path.open("w", encoding="utf-8") as f:
        i = written = 0
        while written < total_bytes:
            line = json.dumps({"id": f"r{i}", "src": pad}) + "\n"
            f.write(line)
            written += len(line)
            i += 1
    return i


def _peak_alloc(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fifty_megabyte_jsonl_is_inspected_in_bounded_memory(tmp_path):
    from odedit.requests.io import inspect_batch

    p = tmp_path / "big.jsonl"
    n = _write_big_jsonl(p, 50 * MB, 64 * 1024)
    assert p.stat().st_size >= 50 * MB
    rows, peak = _peak_alloc(lambda: inspect_batch(p))
    assert rows == n
    assert peak < 2 * MB, f"peak {peak / MB:.1f} MiB while streaming a 50 MiB file"


def test_a_fifty_megabyte_line_is_one_rejected_row_in_bounded_memory(tmp_path):
    from odedit.requests.io import KEEP_OF_LONG_LINE, ReadLimits, read_jsonl

    p = tmp_path / "one_line.jsonl"
    with p.open("w") as f:
        f.write('{"id": "ok", "src": "q"}\n{"id": "huge", "src": "')
        for _ in range(50):
            f.write("x" * MB)
        f.write('"}\n{"id": "after"}\n')
    rows, peak = _peak_alloc(lambda: read_jsonl(p, ReadLimits(max_file_bytes=64 * MB, max_line_bytes=MB)))
    assert peak < 4 * MB, f"peak {peak / MB:.1f} MiB for a 50 MiB line"
    assert [r.row_id for r in rows] == ["ok", "one_line.jsonl:2", "after"]
    (issue,) = rows[1].issues
    assert issue.reason == Reason.LINE_TOO_LONG and "over the 1048576-byte cap" in issue.message
    assert rows[1].original.startswith('{"id": "huge"') and len(rows[1].original) == KEEP_OF_LONG_LINE


def test_file_over_the_size_cap_is_refused_before_reading(tmp_path, monkeypatch):
    from odedit.requests.io import BatchTooLarge, ReadLimits, inspect_batch

    p = tmp_path / "b.jsonl"
    _write_big_jsonl(p, 200_000, 1000)
    for reader in (read_batch, inspect_batch):
        with pytest.raises(BatchTooLarge, match="over the 100000-byte cap"):
            reader(p, ReadLimits(max_file_bytes=100_000))
    monkeypatch.setenv("ODEDIT_MAX_BATCH_BYTES", "1000")  # the default comes from the environment
    with pytest.raises(BatchTooLarge):
        read_batch(p)
    q = tmp_path / "b.json"
    q.write_text(json.dumps([{"id": "x" * 2000}]))
    with pytest.raises(BatchTooLarge):
        read_batch(q)


def test_symlinks_fifos_and_directories(tmp_path):
    import os

    from odedit.requests.io import NotARegularFile, ReadLimits

    target = tmp_path / "outside.jsonl"
    target.write_text('{"id": "secret"}\n')
    link = tmp_path / "link.jsonl"
    os.symlink(target, link)
    assert [r.row_id for r in read_batch(link)] == ["secret"]  # followed by default (CLI use)
    with pytest.raises(NotARegularFile, match="symlink"):
        read_batch(link, ReadLimits(follow_symlinks=False))
    os.mkfifo(tmp_path / "pipe.jsonl")  # would block forever if opened for a blocking read
    with pytest.raises(NotARegularFile, match="not a regular file"):
        read_batch(tmp_path / "pipe.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(BatchReadError):
        read_batch(tmp_path / "dir.jsonl")


def test_inspect_batch_errors(tmp_path):
    from odedit.requests.io import EmptyBatchError, inspect_batch

    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(EmptyBatchError):
        inspect_batch(tmp_path / "e.jsonl")
    (tmp_path / "junk.jsonl").write_bytes(b"\x00\x01 not json\n")
    with pytest.raises(BatchReadError, match="no line is valid JSON"):
        inspect_batch(tmp_path / "junk.jsonl")
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(EmptyBatchError):
        inspect_batch(tmp_path / "e.parquet")
    (tmp_path / "x.parquet").write_text("nope")
    with pytest.raises(BatchReadError, match="not a readable Parquet"):
        inspect_batch(tmp_path / "x.parquet")
    pq.write_table(pa.table({"id": ["a", "b"]}), tmp_path / "ok.parquet")
    assert inspect_batch(tmp_path / "ok.parquet") == 2


def test_synthetic_ids_follow_the_id_policy(tmp_path):
    from schemas.ids import is_valid_id

    p = tmp_path / "my batch [v2].json"
    p.write_text(json.dumps([MMEDIT_RECORD]))
    (row,) = read_batch(p)
    assert row.row_id == "my_batch__v2_-0" and is_valid_id(row.row_id)


def test_validate_batch_passes_read_limits(tmp_path):
    import os

    from odedit.requests import NotARegularFile, ReadLimits, validate_batch

    target = tmp_path / "t.jsonl"
    target.write_text('{"id": "a"}\n')
    os.symlink(target, tmp_path / "l.jsonl")
    with pytest.raises(NotARegularFile):
        validate_batch(tmp_path / "l.jsonl", [tmp_path], read_limits=ReadLimits(follow_symlinks=False))
