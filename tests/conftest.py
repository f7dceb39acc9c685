from __future__ import annotations

import time

import psutil
import pytest


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def no_leftover_workers():
    """Fails the test if worker processes outlive it."""
    before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 10
    left = [p for p in _children() if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in _children() if p.pid not in before]
    assert not left, "worker processes left behind: %s" % [
        (p.pid, " ".join(p.cmdline()[:4])) for p in left]
