"""The registered model as an MLflow pyfunc: the implementation behind the logged shim.

Every version is logged as "models from code" with `odedit/registry_model.py`, a shim of three
lines that imports THIS module from the installed odedit (whose version is pinned in the
model's pip requirements) and calls `mlflow.models.set_model`; the shim's sha256 is a version
tag, so a modified code artifact is refused by `promote` / `odedit.registry.download_version`,
and by `load_context` below (see `odedit.integrity`).

A registered version stores no weights: `lineage.json` names the base model by reference
(`odedit:embedded` for the shipped model, else a local path or hub id) and `delta/` holds the
composed delta of every edit in the version's lineage, relative to that base. Loading first
verifies the artifacts against `integrity.json` (written at log time), refuses a version that
is not the base but has no (or an empty) delta, then reads the base through the model adapter
and applies the delta (which refuses a different base).

Input: a DataFrame with columns `image` (a file path, a base64 PNG, or empty for text-only)
and `prompt`. Output: a DataFrame with one column `answer`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import mlflow
import pandas as pd

from odedit.integrity import (IntegrityError, check_delta_present, compare, digest_dir, digest_file,
                              read_manifest)
from odedit.lifecycle.models import EMBEDDED_REF, decode_image, load_edited, resolve_base  # noqa: F401

CODE_FILE = "registry_model.py"


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("odedit")
    except PackageNotFoundError:
        return None


def verify_artifacts(artifacts: dict) -> dict:
    """Check a loaded model's delta, ledger, lineage and code file against its `integrity.json`;
    returns the manifest. Raises IntegrityError on any difference or missing part."""
    if "integrity" not in artifacts:
        raise IntegrityError("model has no integrity.json artifact: it cannot be verified, refusing to serve it")
    man = read_manifest(artifacts["integrity"])
    lineage = Path(artifacts["lineage"])
    model_dir = lineage.parent.parent  # <model>/artifacts/lineage.json
    what = f"model {json.loads(lineage.read_text()).get('model', '?')}" if lineage.is_file() else "model"
    delta, ledger = Path(artifacts.get("delta") or model_dir / "artifacts" / "delta"), Path(
        artifacts.get("ledger") or model_dir / "artifacts" / "ledger")
    code = model_dir / man.get("code_file", CODE_FILE)
    found = {"delta": digest_dir(delta) if delta.is_dir() else "<missing>",
             "ledger": digest_dir(ledger) if ledger.is_dir() else "<missing>",
             "lineage": digest_file(lineage) if lineage.is_file() else "<missing>",
             "code": digest_file(code) if code.is_file() else "<missing>"}
    compare(man, found, what)
    check_delta_present(delta, man.get("kind"), what)
    return man


class EditedModel(mlflow.pyfunc.PythonModel):
    # MLflow's opt-out of type-hint validation: this model takes a DataFrame checked against its
    # logged signature; without it MLflow warns on every import (CLI and flow logs) to add hints
    _skip_type_hint_validation = True

    def load_context(self, context):
        man = verify_artifacts(context.artifacts)
        have = installed_version()
        if man.get("odedit_version") and have and man["odedit_version"] != have:
            warnings.warn(f"model was logged with odedit {man['odedit_version']}, serving with odedit {have}")
        lineage = json.loads(Path(context.artifacts["lineage"]).read_text())
        self.lineage = lineage
        self.adapter = load_edited(lineage["base_ref"], context.artifacts.get("delta"),
                                   device=os.environ.get("ODEDIT_DEVICE"))

    def predict(self, context, model_input, params=None):
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        max_new = int((params or {}).get("max_new_tokens", 8))
        images = df["image"] if "image" in df.columns else [None] * len(df)
        answers = [self.adapter.answer(str(p), decode_image(im), max_new_tokens=max_new)
                   for p, im in zip(df["prompt"], images)]
        return pd.DataFrame({"answer": answers})
