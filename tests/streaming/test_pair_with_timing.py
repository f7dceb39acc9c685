"""PairWithTiming (ReverseTestStream's runner primitive) on GpuRunner."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream as beam_ts
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

pytestmark = pytest.mark.slow


def test_elements_are_paired_with_the_test_clock_and_the_watermark():
    stream = (beam_ts.TestStream()
              .advance_watermark_to(0)
              .advance_processing_time(5)
              .add_elements(["a", "b"])
              .advance_watermark_to(10)
              .advance_processing_time(2)
              .add_elements([TimestampedValue("c", 12)]))
    options = PipelineOptions(runner="beam_gpu_runner.GpuRunner", streaming=True)
    with beam.Pipeline(options=options) as p:
        timed = (p | stream | beam_ts.PairWithTiming()
                 | beam.Map(lambda e, ts=beam.DoFn.TimestampParam: (
                     e[0], ts.micros, e[1].processing_time.micros,
                     e[1].watermark.micros)))
        # The test clock starts at the epoch; the watermark is the one the
        # stage sees (the TestStream's, at most the element's timestamp).
        assert_that(timed, equal_to([
            ("a", 0, 5_000_000, 0),
            ("b", 0, 5_000_000, 0),
            ("c", 12_000_000, 7_000_000, 10_000_000),
        ]))
