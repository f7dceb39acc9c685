"""A live streaming job: PeriodicImpulse into 1 s fixed windows, counted.

Window results are written to files by a DoFn and read by the test while the
job runs: the first window's count must arrive while the job is RUNNING
(about a second after the start: the window closes at 1 s, the watermark
follows the source's clock), and cancel() must end the job with no worker
processes left.
"""
from __future__ import annotations

import json
import pathlib
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.window import FixedWindows

from beam_gpu_runner.runner import GpuRunner

pytestmark = pytest.mark.slow


class WriteWindow(beam.DoFn):
    def __init__(self, folder: str) -> None:
        self._folder = folder

    def process(self, element, window=beam.DoFn.WindowParam):
        _, counts = element
        start = float(window.start)
        path = pathlib.Path(self._folder) / ("window-%.3f.json" % start)
        path.write_text(json.dumps({"start": start, "count": sum(counts),
                                    "written_at": time.time()}))
        yield start


def _windows(folder: pathlib.Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("window-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:   # being written
            pass
    return out


def test_windows_fire_while_the_job_runs_and_cancel_ends_it(tmp_path, no_leftover_workers):
    folder = tmp_path / "windows"
    folder.mkdir()
    start = time.time()
    pipeline = beam.Pipeline(runner=GpuRunner(),
                             options=PipelineOptions(["--streaming", "--num_workers=2"]))
    _ = (pipeline
         | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + 3600,
                           fire_interval=0.05)
         | beam.WindowInto(FixedWindows(1))
         | beam.Map(lambda _: ("count", 1))
         | beam.GroupByKey()
         | beam.ParDo(WriteWindow(str(folder))))
    result = pipeline.run()
    try:
        deadline = time.time() + 120
        seen: list[dict] = []
        while not seen and time.time() < deadline:
            assert result.state in (PipelineState.STARTING, PipelineState.RUNNING), (
                "the job ended before any window fired: %s" % result.state)
            time.sleep(0.05)
            seen = _windows(folder)
        assert seen, "no window result within 120 s"
        assert result.state == PipelineState.RUNNING
        first = min(seen, key=lambda w: w["start"])
        # Informational: the issue asks for about 2 s; not asserted (no timing).
        print("first window [%.3f, +1s) count=%d arrived %.2f s after the start"
              % (first["start"], first["count"], first["written_at"] - start))
        assert 0 < first["count"] <= 21
        # Keep running: more windows follow, each with about 20 elements.
        while len(_windows(folder)) < 3 and time.time() < deadline:
            time.sleep(0.1)
        full = [w for w in _windows(folder) if w["start"] > first["start"]]
        assert full and all(15 <= w["count"] <= 21 for w in full[:-1] or full), full
        assert result.state == PipelineState.RUNNING
    finally:
        state = result.cancel()
    assert state == PipelineState.CANCELLED
    assert result.wait_until_finish(duration=1000) == PipelineState.CANCELLED
