"""Environment sets as data: the IN / SE / OUT environments and the held-out split built for a
request, saved as a `datasets.Dataset` (images as an `Image` feature) under a directory keyed
by the request's content hash, so a run can be reproduced and inspected later."""

from __future__ import annotations

import io
from pathlib import Path

from datasets import Dataset, Features, Image as ImageFeature, Value, disable_progress_bars, load_from_disk
from PIL import Image

from odedit.environments import Environment, EnvironmentSet, HeldOut
from odedit.models.adapter import Sample

HELDOUT_GROUPS = ("reliability", "t_gen", "m_gen", "t_loc", "m_loc")
FEATURES = Features({
    "request_id": Value("string"),
    "request_hash": Value("string"),
    "split": Value("string"),  # "train" | "heldout"
    "group": Value("string"),  # environment name (train) or held-out group
    "kind": Value("string"),  # IN / SE / OUT for train; the metric for held-out
    "prompt": Value("string"),
    "target": Value("string"),
    "image": ImageFeature(),
})


def _png(image: Image.Image | None):
    if image is None:
        return None
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def to_dataset(es: EnvironmentSet) -> Dataset:
    rows = []
    for env in es.train:
        rows += [("train", env.name, env.kind, s) for s in env.samples]
    for group in HELDOUT_GROUPS:
        rows += [("heldout", group, group, s) for s in getattr(es.heldout, group)]
    return Dataset.from_dict({
        "request_id": [es.request_id] * len(rows),
        "request_hash": [es.request_hash] * len(rows),
        "split": [r[0] for r in rows],
        "group": [r[1] for r in rows],
        "kind": [r[2] for r in rows],
        "prompt": [r[3].prompt for r in rows],
        "target": [r[3].target for r in rows],
        "image": [_png(r[3].image) for r in rows],
    }, features=FEATURES)


def from_dataset(ds: Dataset) -> EnvironmentSet:
    train: dict[str, Environment] = {}
    held = {g: [] for g in HELDOUT_GROUPS}
    for row in ds:
        image = row["image"].convert("RGB") if row["image"] is not None else None
        sample = Sample(row["prompt"], row["target"], image)
        if row["split"] == "train":
            train.setdefault(row["group"], Environment(row["group"], row["kind"], [])).samples.append(sample)
        else:
            held[row["group"]].append(sample)
    first = ds[0]
    return EnvironmentSet(first["request_id"], first["request_hash"], list(train.values()), HeldOut(**held))


def path_for(root: str | Path, request_hash: str) -> Path:
    return Path(root) / request_hash


def save(es: EnvironmentSet, root: str | Path) -> Path:
    """Save under ROOT/<request_hash>; an existing set for the same hash is kept as it is."""
    disable_progress_bars()  # one bar per tiny set is noise in batch logs
    path = path_for(root, es.request_hash)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        to_dataset(es).save_to_disk(str(tmp))
        tmp.rename(path)
    return path


def load(root: str | Path, request_hash: str) -> EnvironmentSet:
    return from_dataset(load_from_disk(str(path_for(root, request_hash))))
