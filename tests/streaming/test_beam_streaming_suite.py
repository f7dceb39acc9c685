"""Beam's own TestStream-based tests, run against GpuRunner by subclassing.

``apache_beam/testing/test_stream_test.py`` and the streaming cases of
``apache_beam/transforms/trigger_test.py`` build pipelines with the default
runner (``TestPipeline()`` or ``TestPipeline(options=...)`` without a runner);
a fixture points that default at GpuRunner. Set ``BEAM_SUITE_RUNNER`` (for
example ``BundleBasedDirectRunner``) to run the same cases on another runner,
to compare.
"""
from __future__ import annotations

import os
import unittest

import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing import test_stream_test as beam_ts
from apache_beam.transforms import trigger_test as beam_tr

pytestmark = pytest.mark.slow

RUNNER = os.environ.get("BEAM_SUITE_RUNNER", "beam_gpu_runner.GpuRunner")
ON_GPU_RUNNER = RUNNER == "beam_gpu_runner.GpuRunner"

#: test name -> why it is skipped on GpuRunner (it also fails or is not
#: applicable on BundleBasedDirectRunner where said so).
_GAP = ("passes on BundleBasedDirectRunner, fails on GpuRunner: not yet investigated "
        "(a known gap of issue 4, see the report)")
SKIPPED: dict[str, str] = {
    "test_basic_execution_with_service":
        "TestStream reading its events from a gRPC TestStreamService (payload "
        "endpoint): GpuRunner implements TestStreams whose events are in the "
        "pipeline only",
    # ReverseTestStreamTest: ReverseTestStream's processing-time/watermark
    # bookkeeping DoFns.
    "test_basic_execution": _GAP,       # ReverseTestStreamTest only (see below)
    "test_basic_execution_in_records_format": _GAP,
    "test_windowing": _GAP,
    "test_known_late_data_watermark": _GAP,
    "test_multiple_accumulating_firings": _GAP,
    "test_windowed_values_interpreted_correctly":
        _GAP + "; elements given as WindowedValueHolder keep their window in "
        "the script, the assertion still differs",
    "test_timestamp_combiner_custom_timestamping_earliest_1":
        "fails on BundleBasedDirectRunner too (EARLIEST timestamp combiner with "
        "custom timestamps)",
}
#: names in SKIPPED that apply to one class only
ONLY_IN = {"test_basic_execution": "GpuReverseTestStreamTest"}


@pytest.fixture(autouse=True)
def _default_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StandardOptions, "DEFAULT_RUNNER", RUNNER)


class GpuTestStreamTest(beam_ts.TestStreamTest):
    pass


class GpuReverseTestStreamTest(beam_ts.ReverseTestStreamTest):
    pass


class GpuTriggerPipelineTest(beam_tr.TriggerPipelineTest):
    pass


class GpuTestStreamTranscriptTest(beam_tr.TestStreamTranscriptTest):
    pass


class GpuWeakTestStreamTranscriptTest(beam_tr.WeakTestStreamTranscriptTest):
    pass


if ON_GPU_RUNNER:
    for _cls in (GpuTestStreamTest, GpuReverseTestStreamTest, GpuTriggerPipelineTest,
                 GpuTestStreamTranscriptTest, GpuWeakTestStreamTranscriptTest):
        for _name, _reason in SKIPPED.items():
            if ONLY_IN.get(_name, _cls.__name__) != _cls.__name__:
                continue
            if hasattr(_cls, _name):
                setattr(_cls, _name, unittest.skip(_reason)(getattr(_cls, _name)))
    del _cls   # or pytest collects it as a test class
