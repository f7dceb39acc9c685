"""What every placement says about a worker process: its exit and its log."""
from __future__ import annotations

import collections
import signal
from typing import Optional


def describe_returncode(returncode: Optional[int]) -> str:
    """"running", "exit code 1", "killed by signal 9 (SIGKILL)"."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return "killed by signal %d (%s)" % (-returncode, name)
    return "exit code %d" % returncode


def read_log_tail(path: Optional[str], lines: int = 20) -> str:
    """The last ``lines`` lines of a worker's log file ("" when unreadable)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            tail = collections.deque(f, maxlen=lines)
    except OSError:
        return ""
    return b"".join(tail).decode("utf-8", "replace")
