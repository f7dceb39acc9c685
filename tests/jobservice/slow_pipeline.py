"""Pipeline pieces for the end-to-end tests. Workers in other processes import
this module (the tests put tests/ on the job server's PYTHONPATH)."""
from __future__ import annotations

import os
import time
from typing import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics


class CountAndDouble(beam.DoFn):
    def __init__(self) -> None:
        self.seen = Metrics.counter("e2e", "seen")

    def process(self, element: int) -> Iterator[int]:
        self.seen.inc()
        yield element * 2


class BlockUntilReleased(beam.DoFn):
    """Writes ``started_path``, then waits until ``release_path`` exists."""

    def __init__(self, started_path: str, release_path: str) -> None:
        self.started_path = started_path
        self.release_path = release_path

    def process(self, element: bytes) -> Iterator[bytes]:
        with open(self.started_path, "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(self.release_path):
            time.sleep(0.2)
        yield element
