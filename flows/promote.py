"""Promotion: `champion` moves to a gated version (default: the `candidate`) after the gate is
re-checked against the CURRENT champion. Only aliases and tags change."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odedit.lifecycle import state

state.configure_environment()

from prefect import flow  # noqa: E402

from tasks import run_logger  # noqa: E402

from odedit.lifecycle import gate  # noqa: E402
from tasks import lifecycle as tl  # noqa: E402


@flow(name="promote")
def promote(name: str = state.DEFAULT_MODEL_NAME, version: str | None = None, gate_config: str | None = None,
            deployment: str | None = None, tracking_uri: str | None = None, actor: str | None = None,
            note: str = "") -> dict:
    """Make a gated version (default: the candidate) the champion, if it descends from the
    current champion and passes the re-check. `actor` (default: $ODEDIT_ACTOR, else the login)
    and `note` are recorded with the move."""
    with state.model_lock(name):
        return _promote(name, version, gate_config, deployment, tracking_uri, actor, note)


def _promote(name, version, gate_config, deployment, tracking_uri, actor=None, note="") -> dict:
    info = tl.resolve_candidate(name, version, tracking_uri)
    if info["version"] == info["champion"]:
        return {"name": name, "champion": info["champion"], "status": "already-champion"}
    with tempfile.TemporaryDirectory(dir=state.work_dir()) as work:
        verdict = tl.recheck_gate(name, info, gate.load_gate_config(gate_config, deployment), tracking_uri, work)
    if not verdict.passed:
        run_logger().warning("promotion of %s refused: %s", info["version"], "; ".join(verdict.reasons))
        return {"name": name, "champion": info["champion"], "status": "refused", "reasons": verdict.reasons}
    tl.move_champion(name, info["version"], "promote", f"from {info['champion']}" + (f"; {note}" if note else ""),
                     tracking_uri, actor)
    return {"name": name, "champion": info["version"], "previous": info["champion"], "status": "promoted"}


if __name__ == "__main__":
    print(promote(*sys.argv[1:3]))
