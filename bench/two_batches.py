"""Two nightly-size batches through the product, exactly as a user runs them, then ask the
champion every edit through MLflow (issue "Lifelong", first Done-when):

    registry init -> run-batch (12 world edits, seed 1) -> promote
                  -> run-batch (12 world edits, seed 2) -> promote
    mlflow.pyfunc.load_model("models:/odedit-embedded@champion").predict(all 24 edit prompts)

Every command is the `odedit` CLI with the DEFAULT method and the DEFAULT gate, in a fresh
state directory (SQLite MLflow store, Prefect's ephemeral API). Prints one line per step and a
final verdict; exits 1 when a batch fails its gate, a promotion is refused, or the champion
answers fewer than --need of the edits with their target.

    .venv/bin/python bench/two_batches.py [--state DIR] [--need 23] [--method M]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, help="state directory (default: a fresh temporary one)")
    ap.add_argument("--need", type=int, default=23, help="edits the champion must answer with their target")
    ap.add_argument("--method", help="editing method (default: run-batch's default)")
    ap.add_argument("--seeds", default="1,2", help="request seeds, one batch each")
    ap.add_argument("--size", type=int, default=12, help="edits per batch")
    a = ap.parse_args()
    state = a.state or Path(tempfile.mkdtemp(prefix="odedit-two-batches-"))
    env = {**os.environ, "ODEDIT_STATE_DIR": str(state)}
    env.pop("MLFLOW_TRACKING_URI", None)
    odedit = [str(Path(sys.executable).with_name("odedit"))]
    name = "odedit-embedded"

    def sh(*args) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        p = subprocess.run(odedit + list(args), env=env, capture_output=True, text=True)
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        print(f"$ odedit {' '.join(args)}  -> exit {p.returncode} ({time.perf_counter() - t0:.0f} s)")
        for line in tail:
            print(f"    {line}")
        return p

    from odedit.models.embedded import default_model_path
    from odedit.pools import world_of

    world = world_of(default_model_path())
    requests, failures = [], 0
    if sh("registry", "init", name).returncode != 0:
        return 1
    for seed in (int(s) for s in a.seeds.split(",")):
        d = state / "batches" / f"seed{seed}"
        batch = world.demo_requests(a.size, d, seed=seed)  # images beside the JSONL
        (d / "requests.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in batch))
        requests += [(r, d) for r in batch]
        extra = ["--method", a.method] if a.method else []
        failures += sh("run-batch", str(d / "requests.jsonl"), "--name", name, *extra).returncode != 0
        failures += sh("promote", name).returncode != 0

    os.environ["ODEDIT_STATE_DIR"] = str(state)
    from odedit.lifecycle import state as st

    st.configure_environment()
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(st.tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    frame = pd.DataFrame({"image": [str(d / r.image) for r, d in requests], "prompt": [r.src for r, _ in requests]})
    answers = list(model.predict(frame)["answer"])
    right = [ans.strip().split()[:1] == r.alt.split()[:1] for (r, _), ans in zip(requests, answers)]
    for (r, _), ans, ok in zip(requests, answers, right):
        if not ok:
            print(f"    wrong: {r.id} {r.src!r} -> {ans!r} (target {r.alt!r})")
    print(json.dumps({"state": str(state), "batches_or_promotions_failed": failures,
                      "champion_answers_target": f"{sum(right)}/{len(right)}", "need": a.need}))
    return 0 if failures == 0 and sum(right) >= a.need else 1


if __name__ == "__main__":
    raise SystemExit(main())
