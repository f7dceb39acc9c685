"""A pipeline's TestStream payload -> the engine's TestStreamScript.

A TestStream is a runner primitive here: ``preprocess.test_stream_inputs`` turns
each of its outputs into a data input that reads ``test_stream:<pcollection>``,
and the engine feeds those buffers from this script.

Times in the payload are milliseconds. Elements are encoded for the data
channel of the stream's output, as the consumer stage reads them: in the global
window with the event's timestamp, or, for a ``WindowedValueHolder``, with its
own timestamp and windows (``preprocess.test_stream_inputs.windowed_test_stream_coders``
gives such an output a data-channel coder for them).
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import grpc

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_interactive_api_pb2, beam_interactive_api_pb2_grpc, beam_runner_api_pb2)
from apache_beam.testing.test_stream import WindowedValueHolder
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import proto_utils
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.bridge.buffers import BufferId, BufferKind, Chunks
from beam_gpu_runner.bridge.context import JobContext
from beam_gpu_runner.engine.test_stream_script import (
    AdvanceProcessingTime, AdvanceWatermark, EmitElements, ScriptEvent, TestStreamScript)
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP

TEST_STREAM_URN = common_urns.primitives.TEST_STREAM.urn


def test_streams(components: beam_runner_api_pb2.Components
                 ) -> dict[str, beam_runner_api_pb2.PTransform]:
    """The pipeline's TestStream transforms, by id."""
    return {tid: t for tid, t in components.transforms.items()
            if t.spec.urn == TEST_STREAM_URN}

_LOG = logging.getLogger(__name__)


#: How long to wait for a TestStreamService to send all its events.
SERVICE_READ_TIMEOUT_S = 60.0


def _micros(value: int, unit: int = 1000) -> int:
    """A payload time in ``unit`` microseconds (1000: the milliseconds of a
    pipeline's TestStreamPayload); Beam's bounds map to ours."""
    if value <= MIN_TIMESTAMP // unit:
        return MIN_TIMESTAMP
    if value >= MAX_TIMESTAMP // unit:
        return MAX_TIMESTAMP
    return value * unit


def read_service_events(url: str, output_ids: Iterable[str],
                        timeout: float = SERVICE_READ_TIMEOUT_S
                        ) -> list[beam_runner_api_pb2.TestStreamPayload.Event]:
    """All events of a TestStreamService (Beam's ``TestStreamServiceController``)
    for the given outputs, read up front: the service's stream must end."""
    channel = grpc.insecure_channel(url)
    try:
        stub = beam_interactive_api_pb2_grpc.TestStreamServiceStub(channel)
        request = beam_interactive_api_pb2.EventsRequest(output_ids=list(output_ids))
        return list(stub.Events(request, timeout=timeout))
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise TimeoutError(
                "TestStream: the TestStreamService at %s did not end its event "
                "stream within %.0f s (GpuRunner reads a service's events up front, "
                "so the stream must be finite)" % (url, timeout)) from exc
        raise RuntimeError("TestStream: reading events from the TestStreamService at "
                           "%s failed: %s" % (url, exc)) from exc
    finally:
        channel.close()


def build_script(context: JobContext) -> Optional[TestStreamScript]:
    streams = test_streams(context.components)
    if not streams:
        return None
    if len(streams) > 1:
        raise ValueError("GpuRunner: a pipeline may have at most one TestStream, "
                         "got %s" % sorted(t.unique_name for t in streams.values()))
    [transform] = streams.values()
    payload = proto_utils.parse_Bytes(
        transform.spec.payload, beam_runner_api_pb2.TestStreamPayload)
    outputs = dict(transform.outputs)
    if payload.endpoint.url:
        # As Beam's DirectRunner reads a service's events: times in microseconds.
        _LOG.info("TestStream %s: reading events from %s", transform.unique_name,
                  payload.endpoint.url)
        proto_events = read_service_events(payload.endpoint.url, sorted(outputs))
        unit = 1
    else:
        proto_events = list(payload.events)
        unit = 1000
    element_coder = context.coder(payload.coder_id)
    buffers = {tag: str(BufferId(BufferKind.TEST_STREAM, pcoll))
               for tag, pcoll in outputs.items()}
    # The real coder (not the runner-safe one, which sees elements as bytes):
    # it writes the same bytes, from values.
    data_coders = {tag: context.channel_coder(pcoll, safe=False).get_impl()
                   for tag, pcoll in outputs.items()}

    def tag_of(tag: str) -> str:
        if tag in outputs:
            return tag
        if len(outputs) == 1:
            return next(iter(outputs))
        raise ValueError("TestStream %r: event for unknown output %r (outputs: %s)"
                         % (transform.unique_name, tag, sorted(outputs)))

    events: list[ScriptEvent] = []
    for event in proto_events:
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
                        value, Timestamp(micros=_micros(element.timestamp, unit)),
                        (GlobalWindow(),))
                impl.encode_to_stream(windowed, out, True)
            count = len(event.element_event.elements)
            events.append(EmitElements(buffers[tag], Chunks.of([out.get()], impl, count),
                                       count))
        elif event.HasField("watermark_event"):
            events.append(AdvanceWatermark(
                _micros(event.watermark_event.new_watermark, unit),
                (buffers[tag_of(event.watermark_event.tag)],)))
        elif event.HasField("processing_time_event"):
            events.append(AdvanceProcessingTime(
                event.processing_time_event.advance_duration * unit / 1e6))
    return TestStreamScript(buffers.values(), events)
