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
def rollback(name: str = state.DEFAULT_MODEL_NAME, to: str | None = None, tracking_uri: str | None = None,
             force: bool = False, note: str = "", actor: str | None = None) -> dict:
    """Point `champion` back at version `to` (default: the previous champion, walking back past
    versions that were rolled back from). Only to a version whose gate passed or the base,
    unless `force` with a `note`. The version's ledger comes back with it (it is per version)."""
    with state.model_lock(name):
        plan = tl.resolve_rollback(name, to, tracking_uri, force, note)
        if plan["to"] == plan["from"]:
            if not tl.alias_moved_outside(name, tracking_uri):
                return {"name": name, "champion": plan["from"], "status": "already-champion"}
            # the alias was moved outside odedit: record that move now (who, when, why)
            tl.move_champion(name, plan["to"], "rollback",
                             f"recorded a move made outside odedit" + (f"; {note}" if note else ""), tracking_uri, actor)
            return {"name": name, "champion": plan["to"], "status": "recorded"}
        text = f"from {plan['from']}" + (f"; FORCED past the gate: {note}" if plan["forced"] else
                                         (f"; {note}" if note else ""))
        tl.move_champion(name, plan["to"], "rollback", text, tracking_uri, actor)
    return {"name": name, "champion": plan["to"], "previous": plan["from"], "status": "rolled-back"}


if __name__ == "__main__":
    print(rollback(*sys.argv[1:3]))
