"""Batch validation: every bad input named in issue 3 is rejected with the right reason,
row and field; good (also odd-mode) images are accepted; nothing crashes; counts balance;
quarantine keeps the original payload; the GX result is kept; the CLI's exit codes."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from odedit.requests import (BatchReadError, EmptyBatchError, Reason, UnsupportedBatchFormat,
                             ValidationLimits, validate_batch)
from odedit.requests.images import check_image_file

LIMITS = ValidationLimits(max_prompt_tokens=12, max_target_tokens=4, max_text_chars=300,
                          max_image_pixels=1_000_000, max_image_bytes=200_000)


# ----------------------------------------------------------------------------- helpers
def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height, with a tiny IDAT: no pixels are allocated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "images"
    r.mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(r / "ok.png")
    return r


def req(i, **kw):
    base = {"id": f"r{i}", "image": "ok.png", "src": f"What colour is object {i}?", "alt": "red"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def only_rejection(res):
    assert len(res.rejected) == 1, [r.message for r in res.rejected]
    return res.rejected[0]


def check_one(row, root, **kw):
    """Validate [good, row]; return the rejection of `row` (the good row must pass)."""
    res = validate_batch([req(0), row], [root], LIMITS, **kw)
    assert [a.id for a in res.accepted] == ["r0"]
    return only_rejection(res)


# ----------------------------------------------------------------------------- fields
@pytest.mark.parametrize("field", ["id", "image", "src", "alt"])
def test_missing_and_null_required_fields(root, field):
    for value in (..., None):
        rej = check_one(req(1, **{field: value}), root)
        assert (rej.reason, rej.field) == ("missing_field", field)
        assert f"field '{field}'" in rej.message


@pytest.mark.parametrize("target", ["", "   ", "\t\n"])
def test_empty_or_whitespace_target(root, target):
    rej = check_one(req(1, alt=target), root)
    assert (rej.reason, rej.field) == ("empty_field", "alt")
    assert rej.message.startswith("row 'r1' (rows[1]), field 'alt'")


def test_target_longer_than_model_can_produce(root):
    rej = check_one(req(1, alt="a very long answer indeed"), root)
    assert (rej.reason, rej.field) == ("target_too_long", "alt")
    assert "5 tokens" in rej.message and "4" in rej.message


def test_prompt_over_the_context_length(root):
    rej = check_one(req(1, src="word " * 13 + "?"), root)
    assert (rej.reason, rej.field) == ("prompt_too_long", "src")


def test_probe_over_the_context_length_names_the_probe(root):
    rej = check_one(req(1, m_loc=["ok.png"], m_loc_q=["q " * 20], m_loc_a=["a"]), root)
    assert (rej.reason, rej.field) == ("probe_too_long", "m_loc_q")


def test_hard_character_cap(root):
    rej = check_one(req(1, subject="x" * 301), root)
    assert (rej.reason, rej.field) == ("text_too_long", "subject")


def test_wrong_types(root):
    rej = check_one(req(1, src=42), root)
    assert (rej.reason, rej.field) == ("wrong_type", "src") and "int 42" in rej.message
    rej = check_one(req(1, alt=True), root)
    assert (rej.reason, rej.field) == ("wrong_type", "alt") and "bool True" in rej.message
    rej = check_one(req(1, rephrase=["ok", 3]), root)
    assert (rej.reason, rej.field) == ("wrong_type", "rephrase[1]")
    rej = check_one(req(1, loc={"a": 1}), root)
    assert (rej.reason, rej.field) == ("wrong_type", "loc")
    rej = check_one(req(1, submitted_at="not a date"), root)
    assert (rej.reason, rej.field) == ("invalid_value", "submitted_at")


def test_control_characters_and_invalid_utf8(root, tmp_path):
    rej = check_one(req(1, src="What\x07 is it?"), root)
    assert (rej.reason, rej.field) == ("control_characters", "src") and "U+0007" in rej.message
    rej = check_one(req(1, loc=["fine", "bad\x00"], loc_ans=["a", "b"]), root)
    assert (rej.reason, rej.field) == ("control_characters", "loc[1]")
    assert not validate_batch([req(1, src="Tabs\tand\nnewlines?")], [root], LIMITS).rejected
    p = tmp_path / "b.jsonl"
    p.write_bytes(json.dumps(req(0)).encode() + b"\n" + b'{"id": "r1", "image": "ok.png", "src": "q\xff?", "alt": "x"}\n')
    rej = only_rejection(validate_batch(p, [root], LIMITS))
    assert (rej.row_id, rej.reason, rej.field) == ("r1", "invalid_utf8", "src")


def test_locality_probe_counts_must_match(root):
    rej = check_one(req(1, loc=["a?", "b?"], loc_ans=["x"]), root)
    assert (rej.reason, rej.field) == ("probe_mismatch", "loc_ans")


# ----------------------------------------------------------------------------- batch-level
def test_duplicate_ids_reject_every_row_sharing_the_id(root):
    res = validate_batch([req(0), req(1), req(2, id="r1")], [root], LIMITS)
    assert [a.id for a in res.accepted] == ["r0"]
    assert [(r.row_index, r.reason, r.field) for r in res.rejected] == [(1, "duplicate_id", "id"),
                                                                        (2, "duplicate_id", "id")]


def test_contradictory_edits_in_one_batch(root):
    rows = [req(0), req(1, src="Who is this?", alt="Ada"), req(2, src="who is this", alt="Grace"),
            req(3, src="Who is this?", alt="Ada", image="./ok.png")]
    res = validate_batch(rows, [root], LIMITS)
    assert [a.id for a in res.accepted] == ["r0"]
    assert {r.row_id: r.reason for r in res.rejected} == {"r1": "contradictory_edit", "r2": "contradictory_edit",
                                                         "r3": "contradictory_edit"}
    assert "2 different targets" in res.rejected[0].message


def test_same_edit_twice_keeps_the_first(root):
    res = validate_batch([req(0), req(1, src="What colour is object 0?")], [root], LIMITS)
    assert [a.id for a in res.accepted] == ["r0"]
    assert only_rejection(res).reason == "duplicate_request"


def test_target_equal_to_prompt_or_current_answer(root):
    rej = check_one(req(1, src="Paris?", alt="paris"), root)
    assert (rej.reason, rej.field) == ("target_equals_prompt", "alt")
    rej = check_one(req(1, pred="Red", alt="red"), root)
    assert rej.reason == "target_equals_current"


def test_locality_probe_overlapping_the_subject(root):
    rej = check_one(req(1, subject="Eiffel Tower", loc=["How tall is the eiffel tower?"], loc_ans=["330 m"]), root)
    assert (rej.reason, rej.field) == ("locality_overlaps_subject", "loc")
    rej = check_one(req(1, subject="cube", m_loc=["ok.png"], m_loc_q=["What is the CUBE made of?"],
                        m_loc_a=["wood"]), root)
    assert (rej.reason, rej.field) == ("locality_overlaps_subject", "m_loc_q")
    # a word that merely contains the subject is not a mention
    assert not validate_batch([req(1, subject="cat", loc=["what is a category?"], loc_ans=["a"])],
                              [root], LIMITS).rejected


def test_edit_prompt_on_another_subjects_image_is_a_valid_locality_probe(root):
    Image.new("RGB", (16, 16), (10, 10, 200)).save(root / "other.png")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / "copy.png")  # ok.png's content, other name
    src = "What colour is object 1?"
    # the classic hard negative: same question, ANOTHER subject's image -> accepted
    res = validate_batch([req(1, subject="cube", m_loc=["other.png"], m_loc_q=[src], m_loc_a=["blue"])],
                         [root], LIMITS)
    assert not res.rejected and res.accepted[0].m_loc_q == [src]
    # the same question on the edit image itself -> about the subject
    rej = check_one(req(1, m_loc=["ok.png"], m_loc_q=[src], m_loc_a=["red"]), root)
    assert (rej.reason, rej.field) == ("locality_overlaps_subject", "m_loc_q")
    # any question on a picture with the edit image's CONTENT (renamed copy) -> about the subject
    rej = check_one(req(1, m_loc=["other.png", "copy.png"], m_loc_q=["What is it?", "Is it big?"],
                        m_loc_a=["a", "b"]), root)
    assert (rej.reason, rej.field) == ("locality_overlaps_subject", "m_loc[1]")


def test_cross_row_checks_only_among_rows_that_passed(root):
    # r0 is good; a broken row sharing its id / asking a contradicting target must not drag it down
    res = validate_batch([req(0), req(1, id="r0", alt="")], [root], LIMITS)
    assert [a.id for a in res.accepted] == ["r0"]
    assert [(r.row_index, r.reason) for r in res.rejected] == [(1, "empty_field")]
    res = validate_batch([req(0), req(1, src="What colour is object 0?", alt="blue", image_rephrase=["gone.png"])],
                         [root], LIMITS)
    assert [a.id for a in res.accepted] == ["r0"]
    assert [r.reason for r in res.rejected] == ["image_missing"]
    # among good rows the checks still apply
    res = validate_batch([req(0), req(1, src="What colour is object 0?", alt="blue")], [root], LIMITS)
    assert {r.row_id: r.reason for r in res.rejected} == {"r0": "contradictory_edit", "r1": "contradictory_edit"}


# ----------------------------------------------------------------------------- images
def test_image_missing(root):
    rej = check_one(req(1, image="nope.png"), root)
    assert (rej.reason, rej.field) == ("image_missing", "image")
    rej = check_one(req(1, image_rephrase=["ok.png", "gone.jpg"]), root)
    assert (rej.reason, rej.field) == ("image_missing", "image_rephrase[1]")


def test_image_bytes_that_do_not_decode(root):
    (root / "junk.png").write_bytes(os.urandom(300))
    (root / "empty.png").write_bytes(b"")
    assert check_one(req(1, image="junk.png"), root).reason == "image_undecodable"
    assert check_one(req(1, image="empty.png"), root).reason == "image_undecodable"


def test_truncated_image(root):
    Image.effect_noise((64, 64), 80).convert("RGB").save(root / "full.png")
    data = (root / "full.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    Image.effect_noise((64, 64), 80).convert("RGB").save(root / "full.jpg", quality=95)
    data = (root / "full.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    for name in ("cut.png", "cut.jpg"):
        rej = check_one(req(1, image=name), root)
        assert (rej.reason, rej.field) == ("image_truncated", "image"), rej.message


def test_decompression_bomb_is_judged_from_the_header(root):
    png_header_only(root / "bomb.png", 100_000, 100_000)  # beyond PIL's own guard
    png_header_only(root / "big.png", 2_000, 2_000)        # beyond our limit only
    for name in ("bomb.png", "big.png"):
        rej = check_one(req(1, image=name), root)
        assert (rej.reason, rej.field) == ("image_too_large", "image"), rej.message
    assert "2000x2000" in check_one(req(1, image="big.png"), root).message


def test_image_over_the_byte_limit(root):
    problem = check_image_file(root / "ok.png", max_bytes=10, max_pixels=10**6)
    assert problem.reason == Reason.IMAGE_TOO_LARGE


@pytest.mark.parametrize("mode, ext", [("P", "png"), ("I;16", "png"), ("RGBA", "png"), ("L", "jpg"),
                                       ("CMYK", "jpg"), ("LA", "png"), ("1", "bmp")])
def test_non_rgb_images_are_accepted(root, mode, ext):
    Image.new(mode, (8, 8)).save(root / f"m.{ext}")
    res = validate_batch([req(1, image=f"m.{ext}")], [root], LIMITS)
    assert res.ok, [r.message for r in res.rejected]


def test_image_path_escaping_the_root(root, tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    os.symlink(outside, root / "link.png")
    (root / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(root / "sub" / "in.png")
    for image in ("../secret.png", "sub/../../secret.png", "sub\\..\\..\\secret.png", str(outside), "link.png"):
        rej = check_one(req(1, image=image), root)
        assert (rej.reason, rej.field) == ("image_path_escapes_root", "image"), image
    # absolute inside the root and a symlink that stays inside are fine
    os.symlink(root / "sub" / "in.png", root / "inner_link.png")
    res = validate_batch([req(1, image=str(root / "sub" / "in.png")), req(2, image="inner_link.png")], [root], LIMITS)
    assert res.ok, [r.message for r in res.rejected]


def test_unsupported_image_type(root):
    (root / "v.svg").write_text("<svg/>")
    Image.new("RGB", (4, 4)).save(root / "p.ppm")
    os.rename(root / "p.ppm", root / "ppm_as.png")
    rej = check_one(req(1, image="v.svg"), root)
    assert (rej.reason, rej.field) == ("unsupported_image_type", "image")
    assert check_one(req(1, image="ppm_as.png"), root).reason == "unsupported_image_type"


def test_several_image_roots_and_no_decoding(root, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (4, 4)).save(other / "o.png")
    assert validate_batch([req(1, image="o.png")], [root, other], LIMITS).ok
    # without image checks: the file system is not touched, lexical checks still apply
    res = validate_batch([req(1, image="absent.png"), req(2, image="../x.png")], [root], LIMITS, check_images=False)
    assert [a.id for a in res.accepted] == ["r1"] and only_rejection(res).reason == "image_path_escapes_root"


# ----------------------------------------------------------------------------- files, counts, quarantine
def test_mixed_batch_counts_balance_and_quarantine_keeps_payload(root, tmp_path):
    p = tmp_path / "mixed.jsonl"
    lines = [json.dumps(req(0)), json.dumps(req(1, alt="   ")), "{broken", json.dumps(req(3, image="../x.png")),
             json.dumps(req(4, src=7)), json.dumps(req(5)), json.dumps(req(6, id="r5")), json.dumps(["list"]),
             json.dumps(req(8, alt="blue"))]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    res = validate_batch(p, [root], LIMITS, out_dir=out)
    rep = res.report
    assert rep.rows_in == 9 == rep.accepted + rep.rejected
    assert rep.accepted == 2 and sum(rep.rejected_by_reason.values()) == rep.rejected == 7
    assert rep.rejected_by_reason == {"duplicate_id": 2, "malformed_row": 2, "empty_field": 1,
                                      "image_path_escapes_root": 1, "wrong_type": 1}
    q = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert len(q) == rep.rejected and len({x["row_index"] for x in q}) == len(q)
    ids_in = set(range(9))
    assert {x["row_index"] for x in q} | {0, 8} == ids_in  # every row ends somewhere, once
    by_index = {x["row_index"]: x for x in q}
    assert by_index[2]["payload"] == "{broken" and by_index[2]["reason"] == "malformed_row"
    assert json.loads(by_index[4]["payload"]) == req(4, src=7)  # resubmittable as it was
    assert json.loads(by_index[1]["issues"])[0]["field"] == "alt"
    accepted = [json.loads(x) for x in (out / "accepted.jsonl").read_text().splitlines()]
    assert [a["id"] for a in accepted] == ["r0", "r8"]
    gx = json.loads((out / "gx_result.json").read_text())
    types = {r["expectation_config"]["type"] for r in gx["results"]}
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_not_be_null",
            "expect_column_value_lengths_to_be_between", "expect_compound_columns_to_be_unique"} <= types
    assert gx["success"] is False
    saved = json.loads((out / "report.json").read_text())
    assert saved["rows_in"] == 9 and saved["artifacts"]["quarantine"].endswith("quarantine.parquet")


def test_all_good_batch_writes_empty_quarantine(root, tmp_path):
    res = validate_batch([req(0), req(1)], [root], LIMITS, out_dir=tmp_path / "o")
    assert res.ok and res.report.gx_success is True and len(res.batch().requests) == 2
    assert pq.read_table(tmp_path / "o" / "quarantine.parquet").num_rows == 0


def test_mmedit_file_with_missing_keys(root, tmp_path):
    rec = {"src": "What is shown?", "pred": "cat", "rephrase": "What does it show?", "alt": "dog",
           "image": "ok.png", "image_rephrase": "ok.png", "loc": "who wrote hamlet", "loc_ans": "shakespeare",
           "m_loc": "m.png", "m_loc_q": "What colour?", "m_loc_a": "red"}
    Image.new("RGB", (16, 16), (10, 200, 10)).save(root / "m.png")  # another picture than the edit's
    p = tmp_path / "E-VQA_eval.json"
    p.write_text(json.dumps([rec, {k: v for k, v in rec.items() if k != "alt"},
                             {k: v for k, v in rec.items() if k not in ("loc", "m_loc_q")}]))
    res = validate_batch(p, [root], LIMITS)
    assert [a.id for a in res.accepted] == ["E-VQA_eval-0"]
    assert res.accepted[0].rephrase == ["What does it show?"]
    by_id = {r.row_id: r for r in res.rejected}
    assert (by_id["E-VQA_eval-1"].reason, by_id["E-VQA_eval-1"].field) == ("missing_field", "alt")
    assert "row 'E-VQA_eval-1'" in by_id["E-VQA_eval-1"].message
    assert by_id["E-VQA_eval-2"].reason == "probe_mismatch"  # loc_ans without loc


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("e.jsonl", "\n \n"), ("e.json", "[]"),
                                           ("e.json", '{"requests": []}')])
def test_empty_batch_is_a_clear_error(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(EmptyBatchError, match="the batch is empty"):
        validate_batch(p, [tmp_path], LIMITS)
    with pytest.raises(EmptyBatchError):
        validate_batch([], [tmp_path], LIMITS)


def test_empty_parquet_is_a_clear_error(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(EmptyBatchError):
        validate_batch(tmp_path / "e.parquet", [tmp_path], LIMITS)


def test_unreadable_batch_files(tmp_path):
    (tmp_path / "b.json").write_text("[{")
    with pytest.raises(BatchReadError):
        validate_batch(tmp_path / "b.json", [tmp_path], LIMITS)
    (tmp_path / "b.txt").write_text("hello")
    with pytest.raises(UnsupportedBatchFormat):
        validate_batch(tmp_path / "b.txt", [tmp_path], LIMITS)


def test_parquet_batch_end_to_end(root, tmp_path):
    import pyarrow as pa

    rows = [req(0, loc=["who wrote hamlet?"], loc_ans=["shakespeare"]), req(1, alt="  ")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    res = validate_batch(tmp_path / "b.parquet", [root], LIMITS)
    assert [a.id for a in res.accepted] == ["r0"] and res.accepted[0].loc == ["who wrote hamlet?"]
    assert only_rejection(res).source == "b.parquet[1]"


def test_every_reason_has_a_description():
    from odedit.requests.reasons import DESCRIPTIONS, reason_table_markdown

    assert set(DESCRIPTIONS) == set(Reason)
    assert reason_table_markdown().count("\n") == len(Reason) + 1


# ----------------------------------------------------------------------------- limits from a model
def test_limits_from_a_model_directory(tmp_path):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from odedit.models.tiny_llava import train_word_tokenizer

    tok = train_word_tokenizer(["what colour is the cube ? red blue"])
    tok.save_pretrained(tmp_path)
    LlavaConfig(vision_config=CLIPVisionConfig(image_size=32, patch_size=8),
                text_config=LlamaConfig(max_position_embeddings=64)).save_pretrained(tmp_path)
    limits = ValidationLimits.from_model(tmp_path, max_target_tokens=6)
    assert (limits.context_length, limits.image_tokens) == (64, 16)
    assert limits.max_prompt_tokens == 64 - 16 - 6 - 2
    assert limits.token_counts(["what colour is the cube ?"]) == [6]
    res = validate_batch([req(0, image="x.png", src="what colour is the cube ?"),
                          req(1, image="x.png", src="cube " * 41)], [tmp_path], limits, check_images=False)
    assert only_rejection(res).reason == "prompt_too_long"


# ----------------------------------------------------------------------------- CLI
def test_cli_exit_codes_and_json(root, tmp_path):
    from typer.testing import CliRunner

    from odedit.cli import app

    runner = CliRunner()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(req(0)) + "\n")
    common = ["--image-root", str(root), "--no-model", "--max-prompt-tokens", "12", "--max-target-tokens", "4"]
    r = runner.invoke(app, ["validate", str(good), "--out", str(tmp_path / "o1"), *common])
    assert r.exit_code == 0, r.output
    assert "accepted" in r.output

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(req(0)) + "\n" + json.dumps(req(1, alt="a b c d e f")) + "\n{bad\n")
    r = runner.invoke(app, ["validate", str(mixed), "--out", str(tmp_path / "o2"), "--json", *common])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert (doc["rows_in"], doc["accepted"], doc["rejected"]) == (3, 1, 2)
    assert doc["rejected_by_reason"] == {"target_too_long": 1, "malformed_row": 1}
    assert doc["rejected_rows"][0]["row_id"] == "r1"
    assert (tmp_path / "o2" / "gx_result.json").is_file()

    r = runner.invoke(app, ["validate", str(mixed), "--out", str(tmp_path / "o3"), *common])
    assert r.exit_code == 1 and "target_too_long" in r.output

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = runner.invoke(app, ["validate", str(empty), *common])
    assert r.exit_code == 2 and "empty" in r.output
    r = runner.invoke(app, ["validate", str(empty), "--json", *common])
    assert r.exit_code == 2 and "empty" in json.loads(r.stdout)["error"]
    r = runner.invoke(app, ["validate", str(tmp_path / "missing.jsonl"), *common])
    assert r.exit_code == 2 and "missing.jsonl: no such file" in r.output
    r = runner.invoke(app, ["validate", str(good), "--model", str(tmp_path / "no_model_here")])
    assert r.exit_code == 2 and "cannot read tokenizer" in r.output


# ----------------------------------------------------------------------------- the id policy (schemas/ids.py)
HOSTILE_IDS = [
    ("a/b", "invalid_id_chars"), ("../../etc/passwd", "invalid_id_chars"), ("..", "invalid_id_chars"),
    (".", "invalid_id_chars"), (".hidden", "invalid_id_chars"), ("-rf", "invalid_id_chars"),
    ("two\nlines", "invalid_id_chars"), ("[/bold]x[red]", "invalid_id_chars"), ("100%", "invalid_id_chars"),
    ("o'brien", "invalid_id_chars"), ("a b", "invalid_id_chars"), ("caf\u00e9", "invalid_id_chars"),
    ("bell\x07", "invalid_id_chars"), ("x" * 129, "id_too_long"), ("y" * 300, "id_too_long"),
    ("z" * 3000, "id_too_long"),
]


@pytest.mark.parametrize("rid, reason", HOSTILE_IDS)
def test_hostile_ids_are_rejected_and_good_rows_pass(root, rid, reason):
    rej = check_one(req(1, id=rid), root)
    assert (rej.reason, rej.field) == (reason, "id"), rej.message
    assert rej.row_id == rid  # the quarantine keeps the id as submitted
    assert "\n" not in rej.message and len(rej.message) < 400  # repr'd, long ids shortened


def test_id_policy_edges(root):
    from schemas.ids import id_problem, is_valid_id

    for ok in ("a", "A.b_c-1", "_x", "x" * 128, "edit-0-000", "a..b"):
        assert is_valid_id(ok) and id_problem(ok) is None, ok
    res = validate_batch([req(0, id="x" * 128), req(1, id="_private.v2")], [root], LIMITS)
    assert res.ok, [r.message for r in res.rejected]
    assert "at most 128" in id_problem("x" * 129)[1] and "'/'" in id_problem("a/b")[1]
    assert not is_valid_id("end\n") and check_one(req(1, id="end\n"), root).reason == "invalid_id_chars"


def test_one_bad_id_never_blocks_a_file(root, tmp_path):
    """A 3000-character id (and friends) in a JSONL file: each bad row rejected with its code,
    the good rows accepted, the quarantine written."""
    p = tmp_path / "ids.jsonl"
    rows = [req(0), req(1, id="q" * 3000), req(2, id="a/b"), req(3, id="100%_'x'"), req(4)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = validate_batch(p, [root], LIMITS, out_dir=tmp_path / "o")
    assert [a.id for a in res.accepted] == ["r0", "r4"]
    assert [r.reason for r in res.rejected] == ["id_too_long", "invalid_id_chars", "invalid_id_chars"]
    q = pq.read_table(tmp_path / "o" / "quarantine.parquet").to_pylist()
    assert [x["row_id"] for x in q] == ["q" * 3000, "a/b", "100%_'x'"]


def test_edit_request_model_and_json_schema_carry_the_id_policy():
    import jsonschema
    from pydantic import ValidationError

    from schemas import export
    from schemas.request import EditRequest

    good = {"id": "r1", "image": "a.png", "src": "q?", "alt": "x"}
    EditRequest.model_validate(good)
    schema = json.loads((export.SCHEMA_DIR / "edit_request.schema.json").read_text())
    jsonschema.validate(good, schema)
    for rid, _ in HOSTILE_IDS:
        with pytest.raises(ValidationError):
            EditRequest.model_validate(dict(good, id=rid))
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(dict(good, id=rid), schema)


def test_readme_lists_every_reason_code():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert [r.value for r in Reason if f"| `{r.value}` |" not in readme] == []
