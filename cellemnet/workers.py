"""Worker processes that never outlive the command that started them.

A process pool's workers are separate processes: when the parent is killed (SIGKILL, the OOM killer, a closed
terminal) they would keep running and keep writing outputs that a re-run is writing too. Every pool in the project
starts its workers with `die_with_parent` as (part of) the initializer.
"""
from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """In a worker: have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op), and exit
    at once if the parent is already gone (it may die between the fork and this call)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def live_children(pid: int) -> set[int]:
    """Processes (not zombies) whose parent is `pid`, read from /proc (Linux; empty elsewhere): how the tests
    check that no worker outlives a killed command."""
    from pathlib import Path

    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            out.add(int(stat.parent.name))
    return out


def is_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux /proc)."""
    from pathlib import Path

    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def still_alive_after(pids, timeout: float) -> list[int]:
    """Wait up to `timeout` seconds for processes to end; the ones still alive then (empty: all gone)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and any(is_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if is_alive(p)]
