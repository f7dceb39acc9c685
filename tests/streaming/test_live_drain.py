"""Draining a live streaming job: PeriodicImpulse (an unbounded splittable
DoFn, due to run for an hour) into 1 s fixed windows, each window's elements
written to a file by a DoFn. After the first window is seen, ``drain()``: the
source must stop (its restriction truncated), the job must end DRAINED by
itself, every element read must be in exactly one window file (the last,
partial window fired too), and no worker process may be left. And a bounded
splittable read, drained halfway, is read to its end.
"""
from __future__ import annotations

import pathlib
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.window import FixedWindows
from apache_beam.utils.timestamp import Duration
from jobservice.slow_pipeline import (   # tests/ is on sys.path (and the workers')
    WriteWindowIndexes, check_complete_windows, read_window_indexes)

from beam_gpu_runner.execution.errors import JobNotDrainableError
from beam_gpu_runner.runner import GpuRunner

pytestmark = pytest.mark.slow

INTERVAL = 0.05


class MarkRead(beam.DoFn):
    """Leaves a file per element the source emitted (``read-<index>``)."""

    def __init__(self, folder: str, start: float, interval: float) -> None:
        self._folder, self._start, self._interval = folder, start, interval

    def process(self, stamp):
        index = round((float(stamp) - self._start) / self._interval)
        pathlib.Path(self._folder, "read-%d" % index).touch()
        yield stamp


def read_so_far(folder: pathlib.Path) -> list[int]:
    return [int(p.name[len("read-"):]) for p in folder.glob("read-*")]


def test_drain_stops_the_source_fires_the_last_window_and_ends_drained(
        tmp_path, no_leftover_workers):
    folder = tmp_path / "windows"
    folder.mkdir()
    start = time.time()
    pipeline = beam.Pipeline(runner=GpuRunner(),
                             options=PipelineOptions(["--streaming", "--num_workers=2"]))
    _ = (pipeline
         | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + 3600,
                           fire_interval=INTERVAL)
         | beam.ParDo(MarkRead(str(folder), start, INTERVAL))
         | beam.WindowInto(FixedWindows(1))
         | beam.Map(lambda t: ("stamps", t))
         | beam.GroupByKey()
         | beam.ParDo(WriteWindowIndexes(str(folder), start, INTERVAL)))
    result = pipeline.run()
    try:
        deadline = time.time() + 120
        while not read_window_indexes(str(folder)) and time.time() < deadline:
            assert result.state in (PipelineState.STARTING, PipelineState.RUNNING), (
                "the job ended before any window fired: %s" % result.state)
            time.sleep(0.05)
        assert read_window_indexes(str(folder)), "no window result within 120 s"
        # Drain only once the source read an element past the first window, so
        # that a later, partial window must fire at the end (no race on it).
        first_end = min(w["end"] for w in read_window_indexes(str(folder)))
        while (not any(start + i * INTERVAL >= first_end for i in read_so_far(folder))
               and time.time() < deadline):
            time.sleep(0.05)
        assert result.state == PipelineState.RUNNING

        assert result.drain() == PipelineState.DRAINING
        assert result.drain() == PipelineState.DRAINING     # a second drain: no-op
        # The source was due to run for an hour: only the drain can end it.
        assert result.wait_until_finish(duration=120_000) == PipelineState.DRAINED
    finally:
        if not PipelineState.is_terminal(result.state):
            result.cancel()

    windows = read_window_indexes(str(folder))
    # Every element the source read is in exactly one pane, from the first on,
    # with no gap; one pane per window (the on-time one: the last, partial
    # window fired at the end of time).
    indexes = check_complete_windows(windows, start, INTERVAL)
    assert len(windows) >= 2
    last = max(windows, key=lambda w: w["start"])
    assert max(indexes) in last["indexes"]
    assert len(indexes) < 3600 / INTERVAL
    print("drained after %d elements in %d windows" % (len(indexes), len(windows)))

    with pytest.raises(JobNotDrainableError, match=r"state DRAINED\): the job already ended"):
        result.drain()


class SlowBoundedRead(beam.DoFn, beam.transforms.core.RestrictionProvider):
    """A bounded splittable read: one index per step, then a checkpoint that
    asks to resume in 0.1 s. Each index is written to ``folder`` as it is read."""

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def initial_restriction(self, element):
        return OffsetRange(0, element)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element, restriction):
        return restriction.size()

    def process(self, element, tracker=beam.DoFn.RestrictionParam()):
        position = tracker.current_restriction().start
        if tracker.try_claim(position):
            (pathlib.Path(self._folder) / ("read-%d" % position)).touch()
            yield position
            tracker.defer_remainder(Duration.of(0.1))


def test_drain_finishes_a_bounded_splittable_read(tmp_path, no_leftover_workers):
    """A bounded restriction is kept whole by truncation: the drain waits for
    all of it, checkpoints and their delays included."""
    folder = tmp_path / "reads"
    folder.mkdir()
    total = 30
    pipeline = beam.Pipeline(runner=GpuRunner(),
                             options=PipelineOptions(["--streaming", "--num_workers=1"]))
    _ = (pipeline | beam.Create([total])
         | beam.ParDo(SlowBoundedRead(str(folder)))
         | beam.Map(lambda i, folder=str(folder): (
             pathlib.Path(folder) / ("out-%d" % i)).touch()))
    result = pipeline.run()
    try:
        deadline = time.time() + 120
        while not list(folder.glob("out-*")) and time.time() < deadline:
            time.sleep(0.05)
        assert 0 < len(list(folder.glob("out-*"))) < total   # halfway (3 s of reading)
        assert result.drain() == PipelineState.DRAINING
        assert result.wait_until_finish(duration=120_000) == PipelineState.DRAINED
    finally:
        if not PipelineState.is_terminal(result.state):
            result.cancel()
    assert sorted(int(p.name[4:]) for p in folder.glob("out-*")) == list(range(total))
