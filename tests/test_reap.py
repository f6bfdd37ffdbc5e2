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


def test_key_cache_entries_long_unused_are_removed_and_a_read_keeps_one(tmp_path, monkeypatch):
    """reap removes key-cache entries neither written nor read for KEY_CACHE_MAX_AGE_S; reading
    an entry (a cache hit in `KeyBank.add`) marks it used. Nothing else in the folder is touched."""
    import torch

    from odedit.editors import nullspace
    from odedit.lifecycle import state

    monkeypatch.setenv("ODEDIT_STATE_DIR", str(tmp_path / "state"))
    cache = state.key_cache_dir()
    cache.mkdir(parents=True)
    past = time.time() - 2 * reap.KEY_CACHE_MAX_AGE_S
    unused, read, fresh, other = (cache / n for n in ("unused.pt", "read.pt", "fresh.pt", "notes.txt"))
    for p in (unused, read, other):
        torch.save((torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)), p)
        os.utime(p, (past, past))
    torch.save((torch.zeros(2, 2, dtype=torch.float64),) * 2, fresh)

    class _Module:  # what KeyBank reads of the edited projection: its input width
        weight = torch.zeros(3, 2)

    bank = nullspace.KeyBank(None, _Module(), 1e-2)
    monkeypatch.setattr(nullspace, "_cache_key", lambda *a: "read")  # the samples' entry is read.pt
    monkeypatch.setattr(nullspace, "batch_keys", lambda *a: iter([([0], torch.zeros(1, 2, dtype=torch.float64),
                                                                   torch.zeros(1, dtype=torch.long))]))
    bank.add([nullspace.Sample("p", "t")], ["s"], cache=cache)  # a hit: read.pt is in use again
    assert time.time() - read.stat().st_mtime < 60
    got = reap.reap(state)
    assert got["key_files"] == [str(unused)]
    assert not unused.exists() and read.exists() and fresh.exists() and other.exists()
