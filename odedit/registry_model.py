"""The registered model as an MLflow pyfunc, logged as "models from code".

A registered version stores no weights: `lineage.json` names the base model by reference
(`odedit:embedded` for the shipped model, else a local path or hub id) and `delta/` holds the
composed delta of every edit in the version's lineage, relative to that base. Loading reads
the base through the model adapter and applies the delta (which refuses a different base).

Input: a DataFrame with columns `image` (a file path, a base64 PNG, or empty for text-only)
and `prompt`. Output: a DataFrame with one column `answer`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pandas as pd

from odedit.lifecycle.models import EMBEDDED_REF, decode_image, load_edited, resolve_base  # noqa: F401


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
