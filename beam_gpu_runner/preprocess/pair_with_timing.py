"""PairWithTiming (Beam's ReverseTestStream primitive) becomes a runner-side stage.

``apache_beam.testing.test_stream.PairWithTiming`` has no SDK implementation:
Beam's DirectRunner pairs each element with ``TimingInfo(processing time,
output watermark)`` itself. Here the phase, run after ``expand_gbk`` and before
fusion, cuts it into a write of ``timing:<transform>`` and a read of
``timed:<transform>`` (as ``expand_gbk`` does for a GroupByKey); the engine
gets a runner-side stage between them (``timing_spec``) that
``bridge.runner_stages.PairWithTimingStage`` runs on the driver.
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator

from apache_beam.internal import pickler
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.test_stream import PairWithTiming

from beam_gpu_runner.bridge.beam import (
    DATA_INPUT_URN, DATA_OUTPUT_URN, Stage, TransformContext, union, unique_name)
from beam_gpu_runner.bridge.buffers import BufferId, BufferKind
from beam_gpu_runner.engine.graph import InputKind, InputSpec, StageSpec

_LOG = logging.getLogger(__name__)



def is_pair_with_timing(transform: beam_runner_api_pb2.PTransform) -> bool:
    if transform.spec.urn != python_urns.PICKLED_TRANSFORM or transform.subtransforms:
        return False
    try:
        return isinstance(pickler.loads(transform.spec.payload), PairWithTiming)
    except Exception:   # not ours to judge: the SDK reports what it cannot run
        _LOG.debug("Could not unpickle transform %s", transform.unique_name,
                   exc_info=True)
        return False


def timing_stage(transform_id: str) -> str:
    return "timing[%s]" % transform_id


def write_buffer(transform_id: str) -> BufferId:
    return BufferId(BufferKind.TIMING, transform_id)


def read_buffer(transform_id: str) -> BufferId:
    return BufferId(BufferKind.TIMED, transform_id)


def pair_with_timing_to_runner(stages: Iterable[Stage], context: TransformContext
                               ) -> Iterator[Stage]:
    for stage in stages:
        if len(stage.transforms) != 1 or not is_pair_with_timing(stage.transforms[0]):
            yield stage
            continue
        [transform] = stage.transforms
        transform_id = stage.name
        if transform != context.components.transforms.get(transform_id):
            transform_id = unique_name(
                context.components.transforms, stage.name)
            context.components.transforms[transform_id].CopyFrom(transform)
        write = Stage(
            transform.unique_name + "/Write",
            [beam_runner_api_pb2.PTransform(
                unique_name=transform.unique_name + "/Write",
                inputs=transform.inputs,
                spec=beam_runner_api_pb2.FunctionSpec(
                    urn=DATA_OUTPUT_URN,
                    payload=write_buffer(transform_id).encode()))],
            downstream_side_inputs=frozenset(),
            must_follow=stage.must_follow)
        yield write
        yield Stage(
            transform.unique_name + "/Read",
            [beam_runner_api_pb2.PTransform(
                unique_name=transform.unique_name + "/Read",
                outputs=transform.outputs,
                spec=beam_runner_api_pb2.FunctionSpec(
                    urn=DATA_INPUT_URN,
                    payload=read_buffer(transform_id).encode()))],
            downstream_side_inputs=stage.downstream_side_inputs,
            must_follow=union(frozenset([write]), stage.must_follow))


def timing_transforms(stages: Iterable[Stage]) -> list[str]:
    """Ids of the PairWithTiming transforms the stages write to, in order."""
    out: list[str] = []
    for stage in stages:
        for t in stage.transforms:
            if t.spec.urn != DATA_OUTPUT_URN:
                continue
            buffer = BufferId.parse(t.spec.payload)
            if buffer.kind is BufferKind.TIMING and buffer.name not in out:
                out.append(buffer.name)
    return out


def timing_spec(transform_id: str) -> StageSpec:
    name = timing_stage(transform_id)
    return StageSpec(name=name,
                     inputs=(InputSpec(name, str(write_buffer(transform_id)),
                                       InputKind.STREAM),),
                     outputs=(str(read_buffer(transform_id)),))
