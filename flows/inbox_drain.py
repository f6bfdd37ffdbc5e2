"""The scheduled knowledge update: every READY request file in the inbox is run through the
edit-batch flow, then moved to done/ or quarantine/ (never deleted) or left for the next run.
Symlinks, empty, over-size and unreadable files go to quarantine/ without an edit; files
still being written are left alone. The rules: `odedit.lifecycle.inbox`."""

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
from odedit.config import LIFECYCLE_METHOD  # noqa: E402
from odedit.lifecycle import inbox  # noqa: E402


@flow(name="inbox-drain")
def inbox_drain(inbox_dir: str | None = None, name: str = state.DEFAULT_MODEL_NAME, method: str = LIFECYCLE_METHOD,
                gate_config: str | None = None, deployment: str | None = "knowledge-update",
                model: str | None = None, steps: int | None = None, tracking_uri: str | None = None,
                settle_s: float | None = None, max_bytes: int | None = None,
                image_root: str | None = None) -> list[dict]:
    """Drain `inbox_dir` (default: the state directory's inbox/). `settle_s`: seconds a file
    without a NAME.ready marker must be unchanged (default $ODEDIT_INBOX_SETTLE_S or 30);
    `max_bytes`: size cap per file (default $ODEDIT_MAX_BATCH_BYTES or 64 MiB). Images of a
    batch folder are under that folder; those of a flat request file under `image_root`
    (default: the inbox itself)."""
    d = Path(inbox_dir) if inbox_dir else state.inbox_dir()

    def run_batch(source: str) -> dict:
        flat = Path(source).parent.resolve() == d.resolve()
        return edit_batch(source, name=name, method=method, gate_config=gate_config, deployment=deployment,
                          model=model, steps=steps, tracking_uri=tracking_uri,
                          image_root=image_root if flat else None)

    return inbox.drain(d, run_batch, settle_s=settle_s, max_bytes=max_bytes, log=run_logger())


if __name__ == "__main__":
    print(inbox_drain(*sys.argv[1:2]))
