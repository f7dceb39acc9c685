"""Helpers shared by the Ray placement tests (imported by plain name)."""
from __future__ import annotations

import time
from typing import Callable

import psutil


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def settled_environ(pid: int, marker: str = "WORKER_ID", timeout: float = 10.0) -> dict[str, str]:
    """The environment of a worker's harness once it runs its final program.

    The actor starts a launcher that exec()s the harness, so /proc/<pid>/environ
    is briefly the launcher's (or, mid-exec, empty): read it only once the
    process no longer runs the launcher and its environment has ``marker``.
    """
    seen: dict[str, str] = {}

    def ready() -> bool:
        try:
            process = psutil.Process(pid)
            launcher = any("prctl" in arg for arg in process.cmdline())
            env = process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        if launcher or marker not in env:
            return False
        seen.update(env)
        return True

    eventually(ready, timeout, "process %d to exec its program with %s set" % (pid, marker))
    return seen
