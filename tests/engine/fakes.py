"""Fakes shared by the element manager's tests."""
from __future__ import annotations

from beam_gpu_runner.engine.events import RunBundle


class TestingClock:
    """Processing time that moves only when a test sets ``now``."""

    __test__ = False

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def runs(instructions):
    """The bundles among the engine's instructions."""
    return [i.bundle for i in instructions if isinstance(i, RunBundle)]
