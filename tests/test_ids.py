"""Every place that turns a request id into a path, a metric key, terminal markup, a log line
or a registry query is safe for ANY string, even though validation rejects bad ids
(schemas/ids.py): hostile ids never leave OUT, never collide as metric keys, never render as
rich markup, and never make a registry search match another request."""

from __future__ import annotations

import os

import pytest

from schemas.ids import display_id, is_valid_id, safe_id

HOSTILE = ["../../escape", "..", ".", "/abs/path", "a/b", "a\\b", "two\nlines", "[/bold]x[red]", "%", "_",
           "o'brien", "", " ", "-rf", ".hidden", "x" * 3000, "\x00nul", "caf\u00e9", "a_b~" + "0" * 12]


@pytest.mark.parametrize("rid", HOSTILE + ["edit-0-000", "a_b"])
def test_delta_path_never_leaves_out(tmp_path, rid):
    from odedit.cli.edit import delta_path

    out = tmp_path / "out"
    p = delta_path(out, rid)
    assert p.parent == (out / "deltas").resolve() and p.name not in ("", ".", "..")
    assert len(p.name) < 100 and "/" not in p.name and "\n" not in p.name
    if is_valid_id(rid):
        assert p.name == rid  # README: OUT/deltas/<id>
    p.mkdir(parents=True)  # it is a real, writable directory inside OUT
    assert p.resolve().is_relative_to(out.resolve())


def test_delta_names_are_distinct_and_refuse_a_planted_symlink(tmp_path):
    from odedit.cli.edit import delta_path

    out = tmp_path / "out"
    names = [delta_path(out, rid).name for rid in HOSTILE + ["a_b", "edit-0-000"]]
    assert len(set(names)) == len(names)
    (out / "deltas").mkdir(parents=True)
    os.symlink(tmp_path, out / "deltas" / "planted")
    with pytest.raises(ValueError, match="leaves"):
        delta_path(out, "planted")


def test_metric_keys_never_collide():
    from flows.edit_batch import _edit_metrics

    ids = ["a/b", "a_b", "a b", "a.b", "x" * 300, "x" * 301, "[/bold]", "two\nlines", "edit-0-000"]
    recs = [{"request_id": rid, "pre": {"reliability": 0.0}, "post": {"reliability": float(i)}, "seconds": 1.0}
            for i, rid in enumerate(ids)]
    m = _edit_metrics(recs)
    keys = [k for k in m if k.endswith("/post.reliability")]
    assert len(keys) == len(ids) and sorted(m[k] for k in keys) == list(map(float, range(len(ids))))
    assert "edit/a_b/post.reliability" in m and "edit/edit-0-000/seconds" in m
    import re

    for k in m:  # MLflow's key rules: alphanumerics, _ - . / and space; at most 250 characters
        assert re.fullmatch(r"[A-Za-z0-9_\-./ ]{1,250}", k), k


def test_display_id_is_one_line_and_bounded():
    for rid in HOSTILE:
        d = display_id(rid)
        assert "\n" not in d and len(d) <= 80
    assert display_id("r1") == "'r1'"


def test_edit_table_renders_hostile_ids_literally():
    from rich.console import Console

    from odedit.cli.render import edit_table
    from odedit.config import EditConfig
    from odedit.editing import EditRecord, EditRun

    run = EditRun(EditConfig(), False, [
        EditRecord("[/bold]evil[red]", "h", "ft-l", "error", "t", error="[/] boom"),
        EditRecord("ok", "h", "ft-l", "ok", "[b]x[/b]", answer_before="[/]", answer_after="y"),
    ])
    con = Console(width=300, record=True)
    con.print(edit_table(run))  # a MarkupError here would be the bug
    text = con.export_text()
    assert "[/bold]evil[red]" in text and "[/] boom" in text and "[b]x[/b]" in text


def test_runs_mentioning_matches_exactly(tmp_path, monkeypatch):
    """LIKE wildcards (% _) and quotes in an id never match other runs."""
    import json

    from mlflow import MlflowClient

    from odedit import registry
    from odedit.lifecycle import state

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(state.EXPERIMENT, artifact_location=(tmp_path / "art").as_uri())
    ids = ["a_b", "axb", "a%b", "abcb", "o'brien", "o''brien", 'q"q', "plain"]
    by_id = {}
    for rid in ids:
        run = client.create_run(exp, tags={registry.T + "request_ids": json.dumps([rid, "other"])})
        by_id[rid] = run.info.run_id
    for rid in ids:
        found = [r.info.run_id for r in registry.runs_mentioning(client, rid)]
        assert found == [by_id[rid]], rid
    assert registry.runs_mentioning(client, "%") == [] and registry.runs_mentioning(client, "_") == []
    assert len(registry.runs_mentioning(client, "other")) == len(ids)


def test_validate_output_shows_hostile_ids_literally(tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from odedit.cli import app

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    good = {"id": "r0", "image": "ok.png", "src": "What colour is it?", "alt": "red"}
    rows = [good, dict(good, id="[/bold]x[red]", src="Other?"), dict(good, id="two\nlines", src="Third?")]
    p = tmp_path / "[batch].jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["validate", str(p), "--no-model", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    assert "'[/bold]x[red]'" in res.output and "'two\\nlines'" in res.output
    assert "invalid_id_chars" in res.output and "[batch]" in res.output


def test_history_and_show_render_hostile_text_literally(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from odedit import registry
    from odedit.cli import app

    monkeypatch.setenv("ODEDIT_STATE_DIR", str(tmp_path / "state"))
    row = {"version": "2", "request_id": "[/bold]", "requester": "[red]ana", "ticket": "T-[1]", "reason": "[/]",
           "answer_before": "[b]", "answer_after": "x", "post.reliability": 1.0, "post.t_locality": 0.5,
           "gate": "passed", "run_id": "abcdef123456"}
    monkeypatch.setattr(registry, "connect", lambda *a, **k: None)
    monkeypatch.setattr(registry, "probe", lambda *a, **k: None)
    monkeypatch.setattr(registry, "history", lambda *a, **k: [row])
    monkeypatch.setattr(registry, "show", lambda *a, **k: [])
    res = CliRunner().invoke(app, ["history", "m"])
    assert res.exit_code == 0, res.output
    assert "[/bold]" in res.output and "[red]ana" in res.output and "T-[1]" in res.output
    res = CliRunner().invoke(app, ["show", "[/bold]\nx"])
    assert res.exit_code == 1 and "'[/bold]\\nx'" in res.output
