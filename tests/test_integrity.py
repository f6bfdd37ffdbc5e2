"""Integrity of what is served (issue Trust 3): a version's delta, ledger, lineage and code shim
are digested at registration (version tags + integrity.json); tampering with the artifact store
is refused by `mlflow.pyfunc.load_model` and by `promote` (which re-checks on the verified
download). Real MLflow registry state on the session's ephemeral Prefect API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from typer.testing import CliRunner

from odedit.lifecycle import fixtures

FAST = dict(method="ft-l", steps=3, deployment="demo")


def stored(c, name: str, version: str) -> Path:
    """The version's model directory IN the artifact store (not a downloaded copy)."""
    mv = c.get_model_version(name, version)
    loc = c.get_logged_model(mv.source.rsplit("/", 1)[-1]).artifact_location
    p = Path(unquote(urlparse(loc).path))
    assert (p / "artifacts" / "integrity.json").is_file() and p.is_relative_to(os.environ["ODEDIT_STATE_DIR"])
    return p


def test_digests_and_load_edited_checks(tmp_path, tiny_model):
    from odedit.delta import Delta
    from odedit.integrity import IntegrityError, digest_dir, digest_file
    from odedit.lifecycle.models import load_edited

    d = Delta({}, {}, {"kind": "base"}).save(tmp_path / "d")
    first = digest_dir(d)
    assert first == digest_dir(d) and len(first) == 64
    (d / "delta.json").rename(d / "other.json")  # same bytes, another name: another digest
    assert digest_dir(d) != first
    (d / "other.json").rename(d / "delta.json")
    assert digest_dir(d) == first
    f = d / "delta.json"
    before = digest_file(f)
    f.write_bytes(f.read_bytes() + b" ")
    assert digest_file(f) != before and digest_dir(d) != first
    with pytest.raises(IntegrityError, match="not a directory"):
        digest_dir(tmp_path / "absent")
    # load_edited: an expected digest is checked before anything loads; an empty delta is
    # refused unless the kind is `base`
    with pytest.raises(IntegrityError, match="delta digest mismatch"):
        load_edited(tiny_model, d, expected_digest="0" * 64)
    with pytest.raises(IntegrityError, match="empty delta"):
        load_edited(tiny_model, Delta({}, {}, {}).save(tmp_path / "e"), kind="edit-batch")
    with pytest.raises(IntegrityError, match="delta.json missing"):
        load_edited(tiny_model, tmp_path / "nothing", kind="edit-batch")
    assert load_edited(tiny_model, tmp_path / "e", kind="base") is not None


def test_tampered_artifacts_refused_by_load_and_promote(harness, tiny_model, state):
    import mlflow

    from flows.edit_batch import edit_batch
    from flows.promote import promote
    from odedit import registry
    from odedit.cli import app
    from odedit.integrity import IntegrityError, digest_dir

    src = fixtures.demo_batch(state / "req" / "t.jsonl", 1, seed=11)
    res = edit_batch.fn(str(src), name="T", model=tiny_model, **FAST)
    assert (res["status"], res["version"]) == ("registered", "2")
    c = registry.connect()
    mv = registry.get_version(c, "T", "2")
    assert {"odedit.delta_sha256", "odedit.ledger_sha256", "odedit.lineage_sha256", "odedit.code_sha256"} <= set(mv.tags)
    home = stored(c, "T", "2")
    delta, code, man = home / "artifacts" / "delta", home / "registry_model.py", home / "artifacts" / "integrity.json"
    assert json.loads(man.read_text())["delta"] == mv.tags["odedit.delta_sha256"] == digest_dir(delta)
    assert "odedit==" in (home / "requirements.txt").read_text()
    assert "from odedit.registry_pyfunc import EditedModel" in code.read_text()  # the shim only
    originals = {p: p.read_bytes() for p in (delta / "delta.safetensors", delta / "delta.json", code, man)}

    def restore():
        for p, b in originals.items():
            p.write_bytes(b)

    def refused(match):
        out = promote.fn("T", deployment="demo")
        assert out["status"] == "refused" and out["champion"] == "1", out
        assert any("IntegrityError" in r and match in r for r in out["reasons"]), out["reasons"]
        assert registry.alias_version(c, "T", "champion").version == "1"

    # (a) flipped bits in the stored delta tensors
    t = delta / "delta.safetensors"
    b = bytearray(originals[t])
    b[-3] ^= 0xFF
    t.write_bytes(bytes(b))
    with pytest.raises(IntegrityError, match="delta digest mismatch"):
        mlflow.pyfunc.load_model("models:/T/2")
    refused("version 2 delta digest mismatch")
    cli = CliRunner().invoke(app, ["promote", "T", "--deployment", "demo"])
    assert cli.exit_code == 1 and "IntegrityError" in cli.output, cli.output
    # ... and integrity.json rewritten to match: the artifact store agrees with itself, but the
    # version TAG (registry database) does not, so the verifying download still refuses it
    m = json.loads(originals[man])
    man.write_text(json.dumps({**m, "delta": digest_dir(delta)}))
    with pytest.raises(IntegrityError, match="version 2 delta digest mismatch"):
        registry.download_version(c, "T", "2", state / "dl-a")
    refused("version 2 delta digest mismatch")
    restore()

    # (b) delta.json removed: not served as the base model
    (delta / "delta.json").unlink()
    with pytest.raises(IntegrityError, match="delta digest mismatch"):
        mlflow.pyfunc.load_model("models:/T/2")
    refused("delta digest mismatch")
    man.write_text(json.dumps({**m, "delta": digest_dir(delta)}))  # even with a consistent manifest
    with pytest.raises(IntegrityError, match="delta.json missing"):
        mlflow.pyfunc.load_model("models:/T/2")
    restore()

    # (d) a line appended to the stored model code: promote refuses it before anything runs;
    # load_model DOES execute the stored file (MLflow runs it to get the model), after which
    # load_context refuses to serve: the check cannot un-run code, only refuse the model
    code.write_text(originals[code].decode() + "import os; os.environ['ODEDIT_TAMPERED_CODE_RAN'] = '1'\n")
    refused("code digest mismatch")
    assert "ODEDIT_TAMPERED_CODE_RAN" not in os.environ  # promote ran nothing from the artifact store
    with pytest.raises(IntegrityError, match="code digest mismatch"):
        mlflow.pyfunc.load_model("models:/T/2")
    assert os.environ.pop("ODEDIT_TAMPERED_CODE_RAN", None) == "1"
    restore()

    # restored bit for bit: verified, promoted and served
    assert promote.fn("T", deployment="demo")["status"] == "promoted"
    model = mlflow.pyfunc.load_model("models:/T@champion")
    assert model.unwrap_python_model().adapter is not None


def test_empty_delta_of_an_edit_version_refused(harness, tiny_model, state):
    import mlflow

    from flows.promote import promote
    from odedit import registry
    from odedit.integrity import IntegrityError

    c = registry.connect()
    registry.init_model(c, "E", tiny_model, [], None)
    empty = registry.download_delta(c, "E", "1", state / "d1")  # the base's empty delta
    run = c.create_run(registry.experiment_id(c))
    v = registry.log_version(c, run.info.run_id, "E", registry.base_ref(c, "E"), empty,
                             {"odedit.kind": "edit-batch", "odedit.gate": "passed", "odedit.parent_version": "1",
                              "odedit.run_id": run.info.run_id}, ["1"])
    registry.set_candidate(c, "E", v)
    with pytest.raises(IntegrityError, match="empty delta"):
        mlflow.pyfunc.load_model(f"models:/E/{v}")
    with pytest.raises(IntegrityError, match=f"version {v} .*empty delta"):
        registry.download_version(c, "E", v, state / "dv")
    out = promote.fn("E", deployment="demo")
    assert out["status"] == "refused" and any("empty delta" in r for r in out["reasons"]), out
    assert registry.alias_version(c, "E", "champion").version == "1"
    # a rollback makes what it restores served: it is verified too
    from flows.rollback import rollback
    from tasks.lifecycle import PromotionRefused

    with pytest.raises(PromotionRefused, match="IntegrityError: .*empty delta"):
        rollback.fn("E", to=v)
    assert registry.alias_version(c, "E", "champion").version == "1"
