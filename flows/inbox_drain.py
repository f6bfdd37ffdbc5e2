"""The scheduled knowledge update: every request file in the inbox is run through the
edit-batch flow, then moved to done/ or quarantine/ (never deleted) or left for the next run."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odedit.lifecycle import state

state.configure_environment()

from prefect import flow  # noqa: E402

from tasks import run_logger  # noqa: E402

from flows.edit_batch import edit_batch  # noqa: E402
from odedit.lifecycle import inbox  # noqa: E402


@flow(name="inbox-drain")
def inbox_drain(inbox_dir: str | None = None, name: str = state.DEFAULT_MODEL_NAME, method: str = "odedit-ft-l",
                gate_config: str | None = None, deployment: str | None = "knowledge-update",
                model: str | None = None, steps: int | None = None, tracking_uri: str | None = None) -> list[dict]:
    """Drain `inbox_dir` (default: the state directory's inbox/)."""
    log = run_logger()
    d = Path(inbox_dir) if inbox_dir else state.inbox_dir()
    results = []
    for f in inbox.pending_files(d):
        try:
            res = edit_batch(str(f), name=name, method=method, gate_config=gate_config, deployment=deployment,
                             model=model, steps=steps, tracking_uri=tracking_uri)
        except Exception as exc:  # registry down, killed step...: the file stays for the next run
            log.error("batch %s failed, left in the inbox: %s", f.name, exc)
            results.append({"source": str(f), "status": "error", "error": str(exc), "moved_to": None})
            continue
        where = inbox.disposition(res)
        if where != "keep":
            reason = {"status": res["status"], "gate": res.get("gate"), "run_id": res.get("run_id")} \
                if where == "quarantine" else None
            res["moved_to"] = str(inbox.move(f, where, reason))
            q = Path(res["work_dir"]) / "validation" / "quarantine.parquet"
            if res.get("rejected") and q.is_file():
                inbox.move(q, "quarantine").rename(d / "quarantine" / f"{f.stem}.rejected.parquet")
        else:
            res["moved_to"] = None
        log.info("%s: %s -> %s", f.name, res["status"], where)
        results.append(res)
    return results


if __name__ == "__main__":
    print(inbox_drain(*sys.argv[1:2]))
