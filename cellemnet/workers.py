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
