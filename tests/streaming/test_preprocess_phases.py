"""Preprocess phases for streaming semantics (fusion only, no job runs)."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.testing import test_stream as beam_ts
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.preprocess.fusion import fuse
from beam_gpu_runner.preprocess import test_stream_inputs as ts_phase




def _coder_urns(components, coder_id):
    """The URNs of a coder and all its components."""
    coder = components.coders[coder_id]
    urns = [coder.spec.urn]
    for component in coder.component_coder_ids:
        urns += _coder_urns(components, component)
    return urns


def _urns(stages):
    return [t.spec.urn for s in stages for t in s.transforms]


def _combine(stream: beam_ts.TestStream, combiner: window.TimestampCombiner):
    p = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = (p | stream | beam.Map(lambda x: ("k", x))
         | beam.WindowInto(window.FixedWindows(10), timestamp_combiner=combiner)
         | beam.CombinePerKey(sum))
    return fuse(p.to_runner_api())


@pytest.mark.parametrize("combiner, lifted", [
    (window.TimestampCombiner.OUTPUT_AT_EOW, True),
    (window.TimestampCombiner.OUTPUT_AT_EARLIEST, False),
    (window.TimestampCombiner.OUTPUT_AT_LATEST, False),
])
def test_streaming_combiners_that_combine_timestamps_are_not_lifted(combiner, lifted):
    _, stages = _combine(beam_ts.TestStream().add_elements([1, 2]), combiner)
    precombine = common_urns.combine_components.COMBINE_PER_KEY_PRECOMBINE.urn
    assert (precombine in _urns(stages)) is lifted


def _test_stream_output_coder_urns(p: beam.Pipeline) -> list:
    """Coder urns of the TestStream's output channel after fusion."""
    context, _ = fuse(p.to_runner_api())
    [stream] = ts_phase.test_streams(context.components).values()
    [pcoll] = stream.outputs.values()
    return _coder_urns(context.components, context.data_channel_coders[pcoll])


def test_windowed_test_stream_elements_travel_with_an_interval_window_coder():
    held = beam_ts.WindowedValueHolder(WindowedValue(
        "a", Timestamp(5), [window.IntervalWindow(5, 10)]))
    p = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = p | beam_ts.TestStream().add_elements([held]) | beam.Map(str)
    urns = _test_stream_output_coder_urns(p)
    assert common_urns.coders.INTERVAL_WINDOW.urn in urns
    assert common_urns.coders.GLOBAL_WINDOW.urn not in urns


def test_plain_test_stream_elements_keep_the_global_window_coder():
    p = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = p | beam_ts.TestStream().add_elements(["a"]) | beam.Map(str)
    urns = _test_stream_output_coder_urns(p)
    assert common_urns.coders.GLOBAL_WINDOW.urn in urns
    assert common_urns.coders.INTERVAL_WINDOW.urn not in urns


def test_mixed_windows_in_one_output_are_refused_clearly():
    held = beam_ts.WindowedValueHolder(WindowedValue(
        "a", Timestamp(5), [window.IntervalWindow(5, 10)]))
    p = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = p | beam_ts.TestStream().add_elements([held, "b"]) | beam.Map(str)
    with pytest.raises(NotImplementedError, match="IntervalWindows only"):
        fuse(p.to_runner_api())


def _periodic_impulse_stages(is_drain: bool = False):
    from apache_beam.transforms.periodicsequence import PeriodicImpulse
    p = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = (p | PeriodicImpulse(start_timestamp=0, fire_interval=1)
         | beam.WindowInto(window.FixedWindows(1)) | beam.Map(lambda x: ("k", x))
         | beam.GroupByKey())
    return fuse(p.to_runner_api(), is_drain=is_drain)


def test_a_drain_variant_truncates_before_the_sdf_process_it_reads():
    from beam_gpu_runner.preprocess.drain import PROCESS_URN, TRUNCATE_URN, truncating_variant
    context, stages = _periodic_impulse_stages()
    components = context.components
    [reader] = [s for s in stages if any(t.spec.urn == PROCESS_URN for t in s.transforms)]
    variant = truncating_variant(reader, components)
    assert variant is not None and variant.name == reader.name
    urns = [t.spec.urn for t in variant.transforms]
    assert urns[urns.index(PROCESS_URN) - 1] == TRUNCATE_URN
    read, truncate, process = variant.transforms[:3]
    assert truncate.unique_name == "PeriodicImpulse/GenSequence/TruncateAndSizeRestriction"
    [read_out] = read.outputs.values()
    assert dict(truncate.inputs) == {"None": read_out}
    [truncated] = truncate.outputs.values()
    assert dict(process.inputs) == {"None": truncated}
    assert components.pcollections[truncated].coder_id == \
        components.pcollections[read_out].coder_id
    # The running stage is left as it was; the rest of the variant is the same.
    assert [t.unique_name for t in reader.transforms] == \
        [t.unique_name for t in variant.transforms if t.spec.urn != TRUNCATE_URN]
    assert dict(reader.transforms[1].inputs) == {"None": read_out}
    # Stages that read no splittable DoFn have no variant.
    assert [truncating_variant(s, components) for s in stages if s is not reader] == \
        [None] * (len(stages) - 1)


def test_a_stage_fused_for_draining_needs_no_variant():
    from beam_gpu_runner.preprocess.drain import truncating_variant
    context, stages = _periodic_impulse_stages(is_drain=True)
    assert [truncating_variant(s, context.components) for s in stages] == [None] * len(stages)
