"""The registered model as an MLflow pyfunc, logged as "models from code".

A registered version stores no weights: `lineage.json` names the base model by reference
(`odedit:embedded` for the shipped model, else a local path or hub id) and `delta/` holds the
composed delta of every edit in the version's lineage, relative to that base. Loading reads
the base through the model adapter and applies the delta (which refuses a different base).

Input: a DataFrame with columns `image` (a file path, a base64 PNG, or empty for text-only)
and `prompt`. Output: a DataFrame with one column `answer`.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import mlflow
import pandas as pd

EMBEDDED_REF = "odedit:embedded"


def resolve_base(ref: str) -> str:
    if ref == EMBEDDED_REF:
        from odedit.models.embedded import default_model_path

        return str(default_model_path())
    return ref


def load_edited(base_ref: str, delta_dir: str | Path | None, device: str | None = None):
    """An adapter on the base model with the composed delta applied."""
    from odedit.delta import DELTA_META, Delta, apply_delta
    from odedit.models.adapter import MLLMAdapter

    adapter = MLLMAdapter.load(resolve_base(base_ref), device=device)
    if delta_dir and (Path(delta_dir) / DELTA_META).is_file():
        delta = Delta.load(delta_dir)
        if delta.tensors:
            apply_delta(adapter.model, delta)
    return adapter


def decode_image(value):
    """A PIL image from a path or a base64 PNG string; None for empty values."""
    from PIL import Image

    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    if isinstance(value, bytes):
        return Image.open(io.BytesIO(value)).convert("RGB")
    s = str(value)
    if len(s) < 4096 and os.path.isfile(s):
        with Image.open(s) as im:
            return im.convert("RGB")
    s = s.split(",", 1)[1] if s.startswith("data:") else s
    return Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB")


class EditedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
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


mlflow.models.set_model(EditedModel())
