"""Rollback: `champion` moves back to a named version or to the previous champion (from the
registered model's champion history tag). Versions are never mutated."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odedit.lifecycle import state

state.configure_environment()

from prefect import flow  # noqa: E402

from tasks import lifecycle as tl  # noqa: E402


@flow(name="rollback")
def rollback(name: str = state.DEFAULT_MODEL_NAME, to: str | None = None, tracking_uri: str | None = None) -> dict:
    """Point `champion` back at version `to` (default: the previous champion)."""
    plan = tl.resolve_rollback(name, to, tracking_uri)
    if plan["to"] == plan["from"]:
        return {"name": name, "champion": plan["from"], "status": "already-champion"}
    tl.move_champion(name, plan["to"], "rollback", f"from {plan['from']}", tracking_uri)
    return {"name": name, "champion": plan["to"], "previous": plan["from"], "status": "rolled-back"}


if __name__ == "__main__":
    print(rollback(*sys.argv[1:3]))
