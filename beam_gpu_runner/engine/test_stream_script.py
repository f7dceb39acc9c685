"""A TestStream's script: elements, watermark and processing-time steps.

The element manager applies one event at a time, only when no bundle is in
flight (the pipeline is quiet), as Beam's DirectRunner does; processing time
is then a test clock that only these events move.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from beam_gpu_runner.engine.events import Payload
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP, Micros


@dataclass(frozen=True)
class EmitElements:
    buffer: str
    payload: Payload
    count: int = 0   # elements in the payload (for logs)


@dataclass(frozen=True)
class AdvanceWatermark:
    to: Micros
    #: the outputs it applies to; empty: all of them
    buffers: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdvanceProcessingTime:
    by: float   # seconds


ScriptEvent = Union[EmitElements, AdvanceWatermark, AdvanceProcessingTime]


class TestStreamScript:
    """The events of one TestStream, consumed in order."""

    __test__ = False   # not a pytest class

    def __init__(self, buffers: Iterable[str], events: Iterable[ScriptEvent]) -> None:
        self.buffers = frozenset(buffers)
        self._events = collections.deque(events)
        self._watermarks: dict[str, Micros] = {b: MIN_TIMESTAMP for b in self.buffers}
        self._finished = False
        for event in self._events:
            if isinstance(event, EmitElements) and event.buffer not in self.buffers:
                raise ValueError(
                    "TestStreamScript: element event for buffer %r, which is not one "
                    "of the stream's outputs %s" % (event.buffer, sorted(self.buffers)))

    def watermark(self, buffer: str) -> Micros:
        """One output's watermark (each output of a TestStream has its own)."""
        return self._watermarks[buffer]

    def exhausted(self) -> bool:
        return self._finished

    def stop(self) -> int:
        """Drop the events not applied yet (a drain): the next ``pop`` is the
        final step to MAX_TIMESTAMP. Returns how many were dropped."""
        dropped = len(self._events)
        self._events.clear()
        return dropped

    def pop(self) -> Optional[ScriptEvent]:
        """The next event; after the last one, a final step to MAX_TIMESTAMP."""
        if self._finished:
            return None
        if not self._events:
            self._finished = True
            self._watermarks = {b: MAX_TIMESTAMP for b in self.buffers}
            return AdvanceWatermark(MAX_TIMESTAMP)
        event = self._events.popleft()
        if isinstance(event, AdvanceWatermark):
            for buffer in event.buffers or self.buffers:
                if event.to < self._watermarks[buffer]:
                    raise ValueError(
                        "TestStreamScript: the watermark of %r may only advance, got %d "
                        "after %d" % (buffer, event.to, self._watermarks[buffer]))
                self._watermarks[buffer] = event.to
        return event
