"""TestStream (``beam:transform:test_stream:v1``) becomes runner-fed data inputs.

The phase runs after fusion: each TestStream output becomes a data input that
reads the buffer ``test_stream:<pcollection>``, which the runner fills from
the stream's events (see ``bridge.test_stream_events``).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from apache_beam.coders.coders import IntervalWindowCoder
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners import pipeline_context
from apache_beam.testing.test_stream import WindowedValueHolder
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils import proto_utils

from beam_gpu_runner.bridge.beam import DATA_INPUT_URN, Stage, TransformContext
from beam_gpu_runner.bridge.buffers import BufferId, BufferKind
from beam_gpu_runner.bridge.test_stream_events import TEST_STREAM_URN, test_streams


def test_stream_buffer(pcollection: str) -> bytes:
    return BufferId(BufferKind.TEST_STREAM, pcollection).encode()


def data_input_name(transform_name: str, tag: str, outputs: int) -> str:
    return transform_name if outputs == 1 else "%s/%s" % (transform_name, tag)


def test_stream_to_input(stages: Iterable[Stage], context: TransformContext
                         ) -> Iterator[Stage]:
    for stage in stages:
        for transform in list(stage.transforms):
            if transform.spec.urn != TEST_STREAM_URN:
                continue
            stage.transforms.remove(transform)
            for tag, pcoll in sorted(transform.outputs.items()):
                stage.transforms.append(beam_runner_api_pb2.PTransform(
                    unique_name=data_input_name(
                        transform.unique_name, tag, len(transform.outputs)),
                    spec=beam_runner_api_pb2.FunctionSpec(
                        urn=DATA_INPUT_URN,
                        payload=test_stream_buffer(pcoll)),
                    outputs={"out": pcoll}))
        yield stage


def windowed_test_stream_coders(stages: Iterable[Stage], context: TransformContext
                                ) -> Iterator[Stage]:
    """Data-channel coders that keep the windows of TestStream elements given
    as ``WindowedValueHolder`` (Python's TestStream wraps elements added with
    their own windows so).

    Runs after ``populate_data_channel_coders``. The stream's output PCollection
    has the global windowing, so its data-channel coder writes GlobalWindow; a
    held element's window would be lost on the wire. When every element of an
    output is held in an IntervalWindow, that output's data channel uses an
    IntervalWindowCoder instead (what the consumer's DATA_INPUT then decodes).
    """
    stages = list(stages)
    components = context.components
    streams = test_streams(components)
    if not streams:
        return iter(stages)
    beam_context = pipeline_context.PipelineContext(components)
    for transform in streams.values():
        payload = proto_utils.parse_Bytes(
            transform.spec.payload, beam_runner_api_pb2.TestStreamPayload)
        if payload.endpoint.url:
            continue
        element_coder = beam_context.coders[payload.coder_id]
        windows: dict[str, set[type]] = {}
        for event in payload.events:
            if not event.HasField("element_event"):
                continue
            tag = event.element_event.tag
            if tag not in transform.outputs and len(transform.outputs) == 1:
                tag = next(iter(transform.outputs))
            for element in event.element_event.elements:
                value = element_coder.decode(element.encoded_element)
                kinds = windows.setdefault(tag, set())
                if isinstance(value, WindowedValueHolder):
                    held = value.windowed_value  # type: ignore[attr-defined]
                    kinds.update(type(w) for w in held.windows)
                else:
                    kinds.add(GlobalWindow)
        for tag, kinds in windows.items():
            if kinds <= {GlobalWindow} or tag not in transform.outputs:
                continue
            if kinds != {IntervalWindow}:
                raise NotImplementedError(
                    "TestStream %r: output %r has elements in windows of types %s; "
                    "GpuRunner carries WindowedValueHolder elements in "
                    "IntervalWindows only (all of an output's elements in them)"
                    % (transform.unique_name, tag, sorted(k.__name__ for k in kinds)))
            pcoll_id = transform.outputs[tag]
            pcoll = components.pcollections[pcoll_id]
            window_coder_id = context.add_or_get_coder_id(
                IntervalWindowCoder().to_runner_api(None),  # type: ignore[arg-type]
                "interval_window_coder")
            windowed_id = context.add_or_get_coder_id(
                beam_runner_api_pb2.Coder(
                    spec=beam_runner_api_pb2.FunctionSpec(
                        urn=common_urns.coders.WINDOWED_VALUE.urn),
                    component_coder_ids=[pcoll.coder_id, window_coder_id]),
                pcoll.coder_id + "_interval_windowed")
            context.data_channel_coders[pcoll_id] = (
                context.maybe_length_prefixed_coder(windowed_id))
    return iter(stages)
