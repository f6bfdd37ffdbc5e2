"""`odedit edit` end to end: a mixed batch edits the good rows, names each bad row and field,
and keeps it in quarantine; a bad --method or --model is one clear error."""

import json

import pandas as pd
from typer.testing import CliRunner

from odedit.cli import app

runner = CliRunner()


def _batch(world_requests, tmp_path):
    root, requests = world_requests
    rows = [r.model_dump(mode="json") for r in requests[:2]]
    bad = dict(rows[0], id="bad-image", image="does-not-exist.png", alt="gorrin", src=rows[0]["src"] + " now")
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + [bad]))
    return root, path


def test_mixed_batch_edits_good_rows_and_quarantines_bad(world_requests, tmp_path):
    root, path = _batch(world_requests, tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["edit", str(path), "--image-root", str(root), "--method", "ft-l",
                              "--out", str(out)])
    assert res.exit_code == 1, res.output  # some rows rejected
    assert "bad-image" in res.output and "image" in res.output
    edits = json.loads((out / "edits.json").read_text())
    assert [r["request_id"] for r in edits["records"]] == ["edit-0-000", "edit-0-001"]
    assert all(r["status"] == "ok" and r["post"]["reliability"] == 1.0 for r in edits["records"])
    assert (out / "deltas" / "edit-0-000" / "delta.safetensors").is_file()
    quarantine = pd.read_parquet(out / "validation" / "quarantine.parquet")
    assert list(quarantine["row_id"]) == ["bad-image"]


def test_unknown_method_and_missing_model_are_clear_errors(world_requests, tmp_path):
    root, path = _batch(world_requests, tmp_path)
    res = runner.invoke(app, ["edit", str(path), "--method", "rome"])
    assert res.exit_code == 2 and "unknown method 'rome'" in res.output
    res = runner.invoke(app, ["edit", str(path), "--model", str(tmp_path / "no-such-model")])
    assert res.exit_code == 2 and "model path does not exist" in res.output
