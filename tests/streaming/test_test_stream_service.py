"""Reading a TestStream's events from Beam's TestStreamService."""
from __future__ import annotations

import threading

import pytest
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.testing import test_stream as beam_ts
from apache_beam.testing.test_stream_service import TestStreamServiceController

from beam_gpu_runner.bridge.test_stream_events import read_service_events


class _Reader:
    def __init__(self, events, block: threading.Event | None = None) -> None:
        self._events = events
        self._block = block

    def read_multiple(self, unused_keys):
        yield from self._events
        if self._block is not None:
            self._block.wait(10)


def _serve(reader):
    service = TestStreamServiceController(reader=reader)
    service.start()
    return service


def test_all_events_of_a_finite_stream_are_read():
    coder = FastPrimitivesCoder()
    events = [e.to_runner_api(coder) for e in
              beam_ts.TestStream(coder=coder).advance_watermark_to(5)
              .add_elements(["a"])._events]
    service = _serve(_Reader(events))
    try:
        assert read_service_events(service.endpoint, ["None"]) == events
    finally:
        service.stop()


def test_a_stream_that_does_not_end_times_out_clearly():
    release = threading.Event()
    service = _serve(_Reader([], block=release))
    try:
        with pytest.raises(TimeoutError, match="did not end its event stream"):
            read_service_events(service.endpoint, ["None"], timeout=0.5)
    finally:
        release.set()
        service.stop()


def test_an_unreachable_service_is_a_clear_error():
    with pytest.raises((RuntimeError, TimeoutError), match="TestStreamService"):
        read_service_events("localhost:1", ["None"], timeout=2.0)
