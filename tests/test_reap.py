"""Clean-up after a killed batch: orphaned Prefect servers of OUR state dir are reaped, others
are left alone; stale batch scratch directories are removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from odedit.lifecycle import reap


def _fake_server(home, orphan: bool) -> int:
    """A process whose command line looks like Prefect's server, with PREFECT_HOME=home;
    orphaned (its starter exited) when `orphan`."""
    env = {**os.environ, "PREFECT_HOME": str(home)}
    code = "import time; time.sleep(120)"
    if orphan:  # the starter (sh) exits at once: the server's parent is gone
        p = subprocess.run(["sh", "-c", f"'{sys.executable}' -c '{code}' {reap.SERVER_MARKER} >/dev/null 2>&1 & echo $!"],
                           env=env, capture_output=True, text=True, check=True)
        return int(p.stdout.strip())
    return subprocess.Popen([sys.executable, "-c", code, reap.SERVER_MARKER], env=env).pid


def _gone(pid: int, within: float = 10.0) -> bool:
    end = time.time() + within
    while time.time() < end:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_orphaned_server_of_this_state_dir_is_reaped_others_stay(tmp_path):
    ours, theirs = tmp_path / "ours" / "prefect", tmp_path / "theirs" / "prefect"
    orphan = _fake_server(ours, orphan=True)
    foreign = _fake_server(theirs, orphan=True)
    # a live server of ours whose starter is alive: this test process, with PREFECT_HOME=ours
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(ours)
    try:
        alive = _fake_server(ours, orphan=False)
        time.sleep(0.5)
        reaped = reap.reap_servers(ours)
        assert orphan in reaped and alive not in reaped and foreign not in reaped
        assert _gone(orphan)
        assert psutil.pid_exists(foreign) and psutil.pid_exists(alive)
    finally:
        if old is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = old
        for pid in (foreign, alive, orphan):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


def test_stale_work_dirs(tmp_path):
    old, new = tmp_path / "old-batch", tmp_path / "new-batch"
    old.mkdir()
    new.mkdir()
    past = time.time() - 2 * reap.WORK_MAX_AGE_S
    os.utime(old, (past, past))
    assert reap.stale_work_dirs(tmp_path) == [old]
