"""Clean-up of what a killed batch leaves behind, done automatically at the start of the next
lifecycle command:

* Prefect's ephemeral API server: a CLI process that is SIGKILLed leaves the uvicorn child it
  started running for ever (~200 MB). A server is reaped only when it is ours and orphaned: its
  command line is Prefect's server app, its PREFECT_HOME is this state directory's, and its
  parent is no longer the Python process that started it (it was re-parented to init or a
  sub-reaper).
* scratch directories of batches under `state/work/` older than a day (a finished batch's
  artifacts are in MLflow; a killed batch's scratch space is never read again).
* key-cache entries (`state/cache/keys/*.pt`, the lifelong editor's key covariances of
  preserved knowledge) neither written nor read for 30 days (PRODUCT): an entry is keyed by the
  weights below the edited layer and the preserved samples, so one that a deployment's nightly
  batches stopped reading belongs to a model or a preservation set no longer in use; on a 7B
  model each is two float64 (11008 x 11008) matrices, ~1.9 GB.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

SERVER_MARKER = "prefect.server.api.server:create_app"
WORK_MAX_AGE_S = 24 * 3600
KEY_CACHE_MAX_AGE_S = 30 * 24 * 3600


def _prefect_home(proc) -> str | None:
    try:
        return proc.environ().get("PREFECT_HOME")
    except Exception:  # another user's process, or gone
        return None


def orphaned_servers(prefect_home: str | Path) -> list:
    """psutil processes of Prefect servers of `prefect_home` whose starter is gone."""
    import psutil

    home = str(Path(prefect_home).resolve())
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if SERVER_MARKER not in " ".join(proc.info["cmdline"] or []):
            continue
        if _prefect_home(proc) is None or str(Path(_prefect_home(proc)).resolve()) != home:
            continue
        try:
            parent = proc.parent()
            starter_alive = parent is not None and parent.pid > 1 and "python" in parent.name().lower()
        except psutil.Error:
            continue
        if not starter_alive:
            out.append(proc)
    return out


def reap_servers(prefect_home: str | Path, wait_s: float = 5.0) -> list[int]:
    """Terminate (then kill) orphaned Prefect servers of `prefect_home`; returns their pids."""
    import psutil

    procs = orphaned_servers(prefect_home)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=wait_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return [p.pid for p in procs]


def _stale(paths, max_age_s: float, now: float | None) -> list[Path]:
    """Those of `paths` (no symlinks) last modified more than `max_age_s` ago."""
    now = time.time() if now is None else now
    return [p for p in paths if not p.is_symlink() and now - p.stat().st_mtime > max_age_s]


def stale_work_dirs(work: str | Path, max_age_s: float = WORK_MAX_AGE_S, now: float | None = None) -> list[Path]:
    d = Path(work)
    return _stale([p for p in d.iterdir() if p.is_dir()], max_age_s, now) if d.is_dir() else []


def stale_key_files(cache: str | Path, max_age_s: float = KEY_CACHE_MAX_AGE_S, now: float | None = None) -> list[Path]:
    """Key-cache entries last written or read (their mtime) more than `max_age_s` ago."""
    d = Path(cache)
    return _stale([p for p in d.glob("*.pt") if p.is_file()], max_age_s, now) if d.is_dir() else []


def reap(state) -> dict:
    """The clean-ups for the state directory module `state` (odedit.lifecycle.state)."""
    pids = reap_servers(state.prefect_home())
    removed = []
    for p in stale_work_dirs(state.work_dir()):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(str(p))
    keys = []
    for p in stale_key_files(state.key_cache_dir()):
        p.unlink(missing_ok=True)
        keys.append(str(p))
    return {"servers": pids, "work_dirs": removed, "key_files": keys}
