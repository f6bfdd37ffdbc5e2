"""The inbox (odedit.lifecycle.inbox): symlinks are never followed, files being written are
left alone, empty / unreadable / over-size files are quarantined once with a reason, memory
stays bounded, rejected rows are kept with their reason codes, an all-rejected batch is
reported as `rejected`. Pure functions with a stand-in batch runner (real validation, no
Prefect); one drain through the real flows at the end."""

from __future__ import annotations

import builtins
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from odedit.lifecycle import inbox

MB = 2**20


def row(i, **kw):
    return {"id": f"r{i}", "image": "ok.png", "src": f"What colour is object {i}?", "alt": "red", **kw}


def write_jsonl(path: Path, rows, marker=True) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if marker:
        path.with_name(path.name + ".ready").write_text("")
    return path


@pytest.fixture
def box(tmp_path):
    d = tmp_path / "inbox"
    d.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(d / "ok.png")
    return d


class Runner:
    """Stands in for the edit-batch flow: real validation into a work dir, no edits."""

    def __init__(self, work: Path):
        self.work, self.calls = work, []

    def __call__(self, source: str) -> dict:
        from odedit.lifecycle import batch

        self.calls.append(Path(source).name)
        work = self.work / f"{Path(source).stem}-{len(self.calls)}"
        v = batch.validate(source, work / "validation")
        return {"source": source, "accepted": len(v.accepted), "rejected": v.rejected, "pending": [],
                "status": "registered" if v.accepted else "nothing-to-do", "work_dir": str(work)}


def reason_of(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".reason.json").read_text())


# ----------------------------------------------------------------------------- selection
def test_scan_sorts_entries_without_reading_any(box, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(json.dumps(row(9)) + "\n")
    write_jsonl(box / "ready.jsonl", [row(0)])
    write_jsonl(box / "fresh.jsonl", [row(1)], marker=False)
    os.symlink(outside / "secret.jsonl", box / "link.jsonl")
    os.symlink(outside, box / "linkdir")
    os.symlink(outside / "secret.jsonl", box / "notes.txt")  # any symlink, whatever its name
    os.mkfifo(box / "pipe.jsonl")
    (box / "upload.jsonl.part").write_text("{")
    (box / "sub").mkdir()
    inbox.layout(box)
    s = inbox.scan(box, settle_s=30)
    assert [c.path.name for c in s.ready] == ["ready.jsonl"] and s.ready[0].marker is not None
    assert [p.name for p in s.waiting] == ["fresh.jsonl"]
    assert {(p.name, r) for p, r, _ in s.refused} == {("link.jsonl", "symlink"), ("linkdir", "symlink"),
                                                      ("notes.txt", "symlink"), ("pipe.jsonl", "not_regular_file")}
    # the same file is ready once nothing changed it for the settle time
    later = inbox.scan(box, settle_s=30, now=time.time() + 31)
    assert [c.path.name for c in later.ready] == ["fresh.jsonl", "ready.jsonl"]


def test_settle_time_from_the_environment(monkeypatch, box):
    monkeypatch.setenv("ODEDIT_INBOX_SETTLE_S", "0.2")
    assert inbox.settle_seconds() == 0.2
    write_jsonl(box / "a.jsonl", [row(0)], marker=False)
    assert [p.name for p in inbox.scan(box).waiting] == ["a.jsonl"]
    time.sleep(0.3)
    assert [c.path.name for c in inbox.scan(box).ready] == ["a.jsonl"]


def test_done_and_quarantine_must_be_real_directories(box, tmp_path):
    os.symlink(tmp_path, box / "quarantine")
    with pytest.raises(inbox.InboxError, match="real directory"):
        inbox.layout(box)


def test_a_file_that_changes_after_listing_is_left(box):
    p = write_jsonl(box / "a.jsonl", [row(0)])
    (c,) = inbox.scan(box, settle_s=30).ready
    with p.open("a") as f:
        f.write(json.dumps(row(1)) + "\n")
    assert inbox.preflight(c)[0] == inbox.WAIT


# ----------------------------------------------------------------------------- a hostile inbox
def test_drain_reads_nothing_outside_and_nothing_half_written(box, tmp_path, monkeypatch):
    import tracemalloc

    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jsonl"
    secret.write_text(json.dumps(row(9)) + "\n")
    write_jsonl(box / "good.jsonl", [row(0)])
    os.symlink(secret, box / "link.jsonl")
    os.symlink(outside, box / "linkdir")
    write_jsonl(box / "empty.jsonl", [])
    write_jsonl(box / "writing.jsonl", [row(1)], marker=False)  # no marker, just written: in progress
    (box / "junk.jsonl").write_bytes(b"\x00\x01\x02 this is not JSON\n")
    (box / "junk.jsonl.ready").write_text("")
    big = box / "big.jsonl"
    with big.open("w") as f:
        line = json.dumps(row(2, src="x" * 60_000)) + "\n"
        for _ in range(50 * MB // len(line) + 1):
            f.write(line)
    (box / "big.jsonl.ready").write_text("")
    assert big.stat().st_size > 50 * MB

    opened = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *a, **kw):
        if isinstance(file, (str, Path)):
            opened.append(Path(file))
        return real_open(file, *a, **kw)

    def spy_os_open(path, *a, **kw):
        opened.append(Path(path))
        return real_os_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    runner = Runner(tmp_path / "work")
    warm = tmp_path / "warm"  # import and warm up validation (GX) first: measure the drain, not imports
    warm.mkdir()
    Image.new("RGB", (8, 8)).save(warm / "ok.png")
    runner(str(write_jsonl(warm / "w.jsonl", [row(0)], marker=False)))
    runner.calls.clear()
    tracemalloc.start()
    try:
        results = inbox.drain(box, runner, settle_s=3600, max_bytes=16 * MB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        monkeypatch.undo()

    by_name = {Path(r["source"]).name: r for r in results}
    assert runner.calls == ["good.jsonl"]  # only the one ready, readable file reached a batch
    assert by_name["good.jsonl"]["status"] == "registered" and (box / "done" / "good.jsonl").is_file()
    assert (box / "done" / "good.jsonl.ready").is_file()  # the marker travels with its file
    for name, reason in [("link.jsonl", "symlink"), ("linkdir", "symlink"), ("empty.jsonl", "empty"),
                         ("junk.jsonl", "unreadable"), ("big.jsonl", "too_large")]:
        q = box / "quarantine" / name
        assert os.path.lexists(q) and not os.path.lexists(box / name), name
        assert by_name[name]["status"] == "quarantined" and reason_of(q)["reason"] == reason, name
    assert (box / "quarantine" / "link.jsonl").is_symlink() and secret.read_text().startswith('{"id": "r9"')
    assert by_name["writing.jsonl"]["status"] == "waiting" and (box / "writing.jsonl").is_file()
    # nothing outside the inbox (and the runner's work dir) was opened; the target never was
    allowed = (box.resolve(), (tmp_path / "work").resolve(), warm.resolve())
    outside_reads = [p for p in opened if p.is_absolute() and str(tmp_path) in str(p)
                     and not any(p.resolve().is_relative_to(a) for a in allowed)]
    assert outside_reads == [] and secret not in opened and (outside / "secret.jsonl") not in opened
    assert peak < 16 * MB, f"peak {peak / MB:.1f} MiB with a 50 MiB file in the inbox"

    # once, not forever: a second drain takes nothing again
    again = Runner(tmp_path / "work2")
    assert [r["status"] for r in inbox.drain(box, again, settle_s=3600)] == ["waiting"] and again.calls == []


def test_big_file_under_the_cap_is_checked_by_streaming(box, tmp_path):
    import tracemalloc

    big = box / "big.jsonl"
    with big.open("w") as f:
        line = json.dumps(row(2, src="y" * 60_000)) + "\n"
        for _ in range(50 * MB // len(line) + 1):
            f.write(line)
    (box / "big.jsonl.ready").write_text("")
    (c,) = inbox.scan(box).ready
    tracemalloc.start()
    try:
        assert inbox.preflight(c, max_bytes=64 * MB) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MB, f"peak {peak / MB:.1f} MiB checking a 50 MiB file"


# ----------------------------------------------------------------------------- rejected rows
def test_rejected_rows_are_kept_and_an_all_rejected_batch_is_rejected(box, tmp_path):
    write_jsonl(box / "mixed.jsonl", [row(0), row(1, id="../evil")])
    write_jsonl(box / "allbad.jsonl", [row(0, id="a/b"), row(1, alt="   "), {"id": "x" * 300}])
    runner = Runner(tmp_path / "work")
    results = {Path(r["source"]).name: r for r in inbox.drain(box, runner, settle_s=3600)}  # no exception

    mixed = results["mixed.jsonl"]
    assert mixed["status"] == "registered" and (box / "done" / "mixed.jsonl").is_file()
    kept = pq.read_table(box / "quarantine" / "mixed.rejected.parquet").to_pylist()
    assert [(r["row_id"], r["reason"], r["field"]) for r in kept] == [("../evil", "invalid_id_chars", "id")]
    assert json.loads(kept[0]["payload"])["id"] == "../evil"

    bad = results["allbad.jsonl"]
    assert bad["status"] == "rejected" and bad["moved_to"] == str(box / "quarantine" / "allbad.jsonl")
    assert not (box / "done" / "allbad.jsonl").exists()
    why = reason_of(box / "quarantine" / "allbad.jsonl")
    assert why["reason"] == "rejected" and why["rejected"] == 3 and why["accepted"] == 0
    kept = pq.read_table(box / "quarantine" / "allbad.rejected.parquet").to_pylist()
    assert sorted(r["reason"] for r in kept) == ["empty_field", "id_too_long", "invalid_id_chars"]
    assert sorted(p.name for p in box.iterdir() if p.is_file()) == ["ok.png"]


def test_finish_moves_only_final_states(box, tmp_path):
    for name in ("kept.jsonl", "gate.jsonl", "done.jsonl"):
        write_jsonl(box / name, [row(0)])
    inbox.layout(box)
    kept = inbox.finish(box / "kept.jsonl", {"status": "registered", "accepted": 2, "pending": ["r1"]}, box)
    assert kept["moved_to"] is None and (box / "kept.jsonl").is_file()  # an edit diverged: retried
    assert [c.path.name for c in inbox.scan(box, settle_s=0).ready] == ["done.jsonl", "gate.jsonl", "kept.jsonl"]
    # ... but not forever: the third run that leaves it pending quarantines it, with its attempts
    for n in (2, 3):
        kept = inbox.finish(box / "kept.jsonl", {"status": "registered", "accepted": 2, "pending": ["r1"]}, box,
                            attempts=3)
    assert kept["attempts"] == 3 and Path(kept["moved_to"]).parent == box / "quarantine"
    why = reason_of(Path(kept["moved_to"]))
    assert why["reason"] == "pending-after-retries" and why["pending"] == ["r1"]
    assert len(json.loads((box / "quarantine" / "kept.jsonl.attempts.json").read_text())) == 3
    # an infrastructure error is not counted: the registry may be back tomorrow
    write_jsonl(box / "err.jsonl", [row(0)])
    for _ in range(5):
        assert inbox.finish(box / "err.jsonl", {"status": "error", "pending": ["r0"]}, box)["moved_to"] is None
    gate = inbox.finish(box / "gate.jsonl", {"status": "gate-failed", "accepted": 1, "run_id": "abc"}, box)
    assert reason_of(Path(gate["moved_to"]))["reason"] == "gate-failed"
    (box / "done" / "done.jsonl").write_text("an earlier file of the same name")
    done = inbox.finish(box / "done.jsonl", {"status": "nothing-to-do", "accepted": 1, "rejected": 0}, box)
    assert Path(done["moved_to"]).parent == box / "done" and Path(done["moved_to"]).name != "done.jsonl"
    assert (box / "done" / "done.jsonl").read_text() == "an earlier file of the same name"  # never overwritten


# ----------------------------------------------------------------------------- through the real flows
def test_inbox_drain_flow(harness, tiny_model, state):
    from flows.inbox_drain import inbox_drain
    from odedit.lifecycle import fixtures

    box = state / "inbox"
    src = fixtures.demo_batch(box / "mixed.jsonl", 1, seed=5)
    good = json.loads(src.read_text().splitlines()[0])
    with src.open("a") as f:
        f.write(json.dumps(dict(good, id="two\nlines", alt="other")) + "\n")
    (box / "mixed.jsonl.ready").write_text("")
    write_jsonl(box / "allbad.jsonl", [dict(good, id="[/bold]"), dict(good, id="100%", src="")])
    os.symlink(state / "nowhere.jsonl", box / "dangling.jsonl")
    write_jsonl(box / "empty.jsonl", [])
    write_jsonl(box / "writing.jsonl", [good], marker=False)
    from typer.testing import CliRunner

    from odedit.cli import app

    demo = CliRunner().invoke(app, ["demo", "--n", "2", "--method", "ft-l", "-o", str(box / "demo-1")])
    assert demo.exit_code == 0, demo.output  # `odedit demo` output, dropped in as it is
    (box / "demo-1.ready").write_text("")

    out = inbox_drain.fn(str(box), name="i2", model=tiny_model, method="ft-l", steps=2, deployment="demo",
                         settle_s=3600)
    by = {Path(r["source"]).name: r for r in out}
    assert by["mixed.jsonl"]["status"] == "registered" and (box / "done" / "mixed.jsonl").is_file()
    assert [r["reason"] for r in pq.read_table(box / "quarantine" / "mixed.rejected.parquet").to_pylist()] \
        == ["invalid_id_chars"]
    assert by["requests.jsonl"]["status"] == "registered" and by["requests.jsonl"]["accepted"] == 2
    assert (box / "done" / "demo-1" / "images").is_dir()  # the demo folder, images and all
    assert by["allbad.jsonl"]["status"] == "rejected" and (box / "quarantine" / "allbad.jsonl").is_file()
    assert pq.read_table(box / "quarantine" / "allbad.rejected.parquet").num_rows == 2
    # the all-rejected batch is a recorded failure: a FAILED MLflow run with its reason counts,
    # and its Prefect flow run carries the batch report artifact
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from odedit.lifecycle.batch_report import artifact_key

    run = mlflow.MlflowClient().get_run(by["allbad.jsonl"]["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["odedit.status"] == "rejected"
    assert sum(v for k, v in run.data.metrics.items() if k.startswith("rejected/")) == 2
    with get_client(sync_client=True) as pc:
        arts = pc.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("allbad")])))
    assert arts and "rejected" in arts[0].data and run.info.run_id in arts[0].data
    assert by["dangling.jsonl"]["reason"] == "symlink" and by["empty.jsonl"]["reason"] == "empty"
    assert by["writing.jsonl"]["status"] == "waiting" and (box / "writing.jsonl").is_file()


def test_unsafe_file_names_are_quarantined(box):
    write_jsonl(box / "two\nlines.jsonl", [row(0)])
    write_jsonl(box / "[bold].jsonl", [row(0)])
    write_jsonl(box / "-rf.jsonl", [row(0)])
    s = inbox.scan(box, settle_s=3600)
    assert s.ready == [] and sorted(r for _, r, _ in s.refused) == ["invalid_name"] * 3


# ----------------------------------------------------------------------------- batch folders
def _folder(box: Path, name: str, rows, marker=True) -> Path:
    d = box / name
    (d / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 200, 0)).save(d / "images" / "g.png")
    write_jsonl(d / "requests.jsonl", [{**r, "image": "images/g.png"} for r in rows], marker=False)
    if marker:
        (box / f"{name}.ready").write_text("")
    return d


def test_a_batch_folder_travels_whole_with_its_images(box, tmp_path):
    d = _folder(box, "nightly-1", [row(0), row(1)])
    (box / "shared-images").mkdir()  # no request file: not a batch, left alone
    Image.new("RGB", (8, 8)).save(box / "shared-images" / "x.png")
    runner = Runner(tmp_path / "work")
    [res] = inbox.drain(box, runner, settle_s=3600)
    assert res["status"] == "registered" and res["accepted"] == 2  # images resolved inside the folder
    moved = box / "done" / "nightly-1"
    assert res["moved_to"] == str(moved) and (moved / "images" / "g.png").is_file() and not d.exists()
    assert (box / "done" / "nightly-1.ready").is_file() and (box / "shared-images" / "x.png").is_file()


def test_unsafe_or_ambiguous_batch_folders_are_quarantined_whole(box, tmp_path):
    two = _folder(box, "two", [row(0)])
    write_jsonl(two / "more.jsonl", [row(1)], marker=False)
    linked = _folder(box, "linked", [row(2)])
    os.symlink(tmp_path, linked / "images" / "escape")
    fresh = _folder(box, "fresh", [row(3)], marker=False)
    runner = Runner(tmp_path / "work")
    results = {Path(r["source"]).name: r for r in inbox.drain(box, runner, settle_s=3600)}
    assert runner.calls == []  # nothing was validated or edited
    assert results["two"]["reason"] == "invalid_folder" and (box / "quarantine" / "two" / "more.jsonl").is_file()
    assert results["linked"]["reason"] == "symlink" and (box / "quarantine" / "linked").is_dir()
    assert results["fresh"]["status"] == "waiting" and fresh.is_dir()  # still being written

