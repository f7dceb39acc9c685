"""TestStream (``beam:transform:test_stream:v1``) becomes runner-fed data inputs.

The phase runs after fusion: each TestStream output becomes a data input that
reads the buffer ``test_stream:<pcollection>``, which the runner fills from
the stream's events (see ``execution.test_stream``).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.runners.worker import bundle_processor

TEST_STREAM_URN = common_urns.primitives.TEST_STREAM.urn
KIND = "test_stream"


def test_stream_buffer(pcollection: str) -> bytes:
    return ("%s:%s" % (KIND, pcollection)).encode("utf-8")


def data_input_name(transform_name: str, tag: str, outputs: int) -> str:
    return transform_name if outputs == 1 else "%s/%s" % (transform_name, tag)


def test_stream_to_input(stages: Iterable[translations.Stage],
                         context: translations.TransformContext
                         ) -> Iterator[translations.Stage]:
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
                        urn=bundle_processor.DATA_INPUT_URN,
                        payload=test_stream_buffer(pcoll)),
                    outputs={"out": pcoll}))
        yield stage


def test_streams(components: beam_runner_api_pb2.Components
                 ) -> dict[str, beam_runner_api_pb2.PTransform]:
    """The pipeline's TestStream transforms, by id."""
    return {tid: t for tid, t in components.transforms.items()
            if t.spec.urn == TEST_STREAM_URN}
