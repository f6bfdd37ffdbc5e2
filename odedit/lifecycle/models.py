"""Loading a registered model's weights: the base by reference plus the composed delta, and
decoding pyfunc image inputs. No mlflow here; `odedit.registry_pyfunc` wraps it as a pyfunc."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

EMBEDDED_REF = "odedit:embedded"


def resolve_base(ref: str) -> str:
    if ref == EMBEDDED_REF:
        from odedit.models.embedded import default_model_path

        return str(default_model_path())
    return ref


def load_edited(base_ref: str, delta_dir: str | Path | None, device: str | None = None,
                expected_digest: str | None = None, kind: str | None = None, what: str = "model"):
    """An adapter on the base model with the composed delta applied.

    `expected_digest`: the delta directory's `odedit.integrity.digest_dir` as registered; a
    mismatch (or a missing directory) raises IntegrityError before anything is loaded. `kind`:
    the version's kind; unless it is `base`, a missing `delta.json` or an empty delta raises
    IntegrityError instead of silently serving the base model. Both default to no check."""
    from odedit.delta import DELTA_META, Delta, apply_delta
    from odedit.models.adapter import MLLMAdapter

    if expected_digest is not None:
        from odedit.integrity import IntegrityError, compare, digest_dir

        if not delta_dir or not Path(delta_dir).is_dir():
            raise IntegrityError(f"{what} delta directory is missing: refusing to serve it")
        compare({"delta": expected_digest}, {"delta": digest_dir(delta_dir)}, what)
    if kind is not None:
        from odedit.integrity import check_delta_present

        check_delta_present(delta_dir, kind, what)
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
