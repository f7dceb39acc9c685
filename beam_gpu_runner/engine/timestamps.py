"""Event time for the engine: integer microseconds, as Beam encodes it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Micros = int

#: Beam's MIN_TIMESTAMP / MAX_TIMESTAMP in microseconds.
MIN_TIMESTAMP: Micros = -0x7FFFFFFFFFFFFFFF - 1
MAX_TIMESTAMP: Micros = 0x7FFFFFFFFFFFFFFF

Clock = Callable[[], float]   # processing time, seconds


def fmt(ts: Micros) -> str:
    if ts == MIN_TIMESTAMP:
        return "MIN"
    if ts == MAX_TIMESTAMP:
        return "MAX"
    return "%dus" % ts


@dataclass(frozen=True)
class StageTime:
    """What a runner-side stage sees of time when one of its bundles runs."""

    input_watermark: Micros
    output_watermark: Micros
    processing_time: float   # seconds (the test clock under a TestStream)
