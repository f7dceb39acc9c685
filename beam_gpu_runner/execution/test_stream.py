"""A pipeline's TestStream payload -> the engine's TestStreamScript.

Times in the payload are milliseconds. Elements are encoded for the data channel of the stream's output (in the
global window, with the event's timestamp), as the consumer stage reads them.
"""
from __future__ import annotations

from typing import Any, Optional

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.testing.test_stream import WindowedValueHolder
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import proto_utils
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.engine.test_stream import (
    AdvanceProcessingTime, AdvanceWatermark, EmitElements, ScriptEvent, TestStreamScript)
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP
from beam_gpu_runner.preprocess.stage_graph import buffer_name
from beam_gpu_runner.preprocess.test_stream import test_stream_buffer, test_streams


def _micros(millis: int) -> int:
    """TestStreamPayload times are milliseconds; Beam's bounds map to ours."""
    if millis <= MIN_TIMESTAMP // 1000:
        return MIN_TIMESTAMP
    if millis >= MAX_TIMESTAMP // 1000:
        return MAX_TIMESTAMP
    return millis * 1000


def build_script(context: beam_exec.FnApiRunnerExecutionContext
                 ) -> Optional[TestStreamScript]:
    streams = test_streams(context.pipeline_components)
    if not streams:
        return None
    if len(streams) > 1:
        raise ValueError("GpuRunner: a pipeline may have at most one TestStream, "
                         "got %s" % sorted(t.unique_name for t in streams.values()))
    [transform] = streams.values()
    payload = proto_utils.parse_Bytes(
        transform.spec.payload, beam_runner_api_pb2.TestStreamPayload)
    if payload.endpoint.url:
        raise NotImplementedError(
            "TestStream %r reads its events from a service at %s; GpuRunner runs "
            "TestStreams whose events are in the pipeline"
            % (transform.unique_name, payload.endpoint.url))
    element_coder = context.pipeline_context.coders[payload.coder_id]
    outputs = dict(transform.outputs)
    buffers = {tag: buffer_name(test_stream_buffer(pcoll)) for tag, pcoll in outputs.items()}
    # The real coder (not the runner-safe one, which sees elements as bytes):
    # it writes the same bytes, from values.
    data_coders = {
        tag: context.pipeline_context.coders[context.data_channel_coders[pcoll]].get_impl()
        for tag, pcoll in outputs.items()}

    def tag_of(tag: str) -> str:
        if tag in outputs:
            return tag
        if len(outputs) == 1:
            return next(iter(outputs))
        raise ValueError("TestStream %r: event for unknown output %r (outputs: %s)"
                         % (transform.unique_name, tag, sorted(outputs)))

    events: list[ScriptEvent] = []
    for event in payload.events:
        if event.HasField("element_event"):
            tag = tag_of(event.element_event.tag)
            impl: Any = data_coders[tag]
            out = create_OutputStream()
            for element in event.element_event.elements:
                value = element_coder.decode(element.encoded_element)
                if isinstance(value, WindowedValueHolder):
                    # Python's TestStream wraps elements given with their windows.
                    windowed = value.windowed_value  # type: ignore[attr-defined]
                else:
                    windowed = WindowedValue(
                        value, Timestamp(micros=_micros(element.timestamp)),
                        (GlobalWindow(),))
                impl.encode_to_stream(windowed, out, True)
            buffer = beam_exec.ListBuffer(impl)
            buffer.append(out.get())
            events.append(EmitElements(buffers[tag], buffer,
                                       len(event.element_event.elements)))
        elif event.HasField("watermark_event"):
            events.append(AdvanceWatermark(
                _micros(event.watermark_event.new_watermark),
                (buffers[tag_of(event.watermark_event.tag)],)))
        elif event.HasField("processing_time_event"):
            events.append(AdvanceProcessingTime(
                event.processing_time_event.advance_duration / 1e3))
    return TestStreamScript(buffers.values(), events)
