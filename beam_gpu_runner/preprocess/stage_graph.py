"""Beam's fused stages -> the engine's string-id StageGraph."""
from __future__ import annotations

from typing import Iterable, Mapping

from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.runners.worker import bundle_processor
from apache_beam.utils import proto_utils

from beam_gpu_runner.engine.graph import (
    InputKind, InputSpec, StageGraph, StageSpec, TimerFamily)
from beam_gpu_runner.preprocess.reverse_test_stream import unheld_timer_families
from beam_gpu_runner.preprocess.timing import timing_spec, timing_transforms

IMPULSE = translations.IMPULSE_BUFFER.decode("ascii")

#: Streaming GroupByKey runs runner-side, as a stage of its own with these
#: timer families (Beam's trigger driver: event- and processing-time timers).
GROUPING_EVENT_TIMERS = "event"
GROUPING_PROCESSING_TIMERS = "processing"


def is_streaming(components: beam_runner_api_pb2.Components) -> bool:
    """A pipeline with an unbounded PCollection runs as a streaming job."""
    unbounded = beam_runner_api_pb2.IsBounded.UNBOUNDED
    return any(pc.is_bounded == unbounded for pc in components.pcollections.values())


def grouping_stage(group_buffer: str) -> str:
    """The runner-side stage that groups ``group_buffer`` with triggers."""
    return "gbk[%s]" % group_buffer


def grouped_buffer(group_buffer: str) -> str:
    """What the runner-side grouping stage writes for the consumer."""
    return "grouped:%s" % group_buffer.split(":", 1)[1]


def buffer_name(buffer_id: bytes) -> str:
    return buffer_id.decode("utf-8")


def timer_family_key(transform_id: str, family: str) -> str:
    """The engine's id for a timer family: unique within its stage."""
    return "%s\x1f%s" % (transform_id, family)


def split_timer_family_key(key: str) -> tuple[str, str]:
    transform_id, family = key.split("\x1f", 1)
    return transform_id, family


def stage_spec(stage: translations.Stage, streaming: bool = False) -> StageSpec:
    stateful = stage.is_stateful()
    inputs: list[InputSpec] = []
    outputs: list[str] = []
    timers: list[TimerFamily] = []
    for t in stage.transforms:
        if t.spec.urn == bundle_processor.DATA_INPUT_URN:
            buffer_id: bytes = t.spec.payload
            if buffer_id == translations.IMPULSE_BUFFER:
                kind = InputKind.IMPULSE
            else:
                kind_name, _ = translations.split_buffer_id(buffer_id)
                kind = InputKind.BARRIER if kind_name == "group" else InputKind.STREAM
            name = buffer_name(buffer_id)
            if kind is InputKind.BARRIER and streaming:
                # Fed, pane by pane, by the runner-side grouping stage.
                kind, name = InputKind.STREAM, grouped_buffer(name)
            inputs.append(InputSpec(t.unique_name, name, kind))
        elif t.spec.urn == bundle_processor.DATA_OUTPUT_URN:
            outputs.append(buffer_name(t.spec.payload))
        elif t.spec.urn in translations.PAR_DO_URNS:
            payload = proto_utils.parse_Bytes(
                t.spec.payload, beam_runner_api_pb2.ParDoPayload)
            unheld = unheld_timer_families(t, payload)
            for family, spec in payload.timer_family_specs.items():
                timers.append(TimerFamily(
                    timer_family_key(t.unique_name, family),
                    processing_time=(spec.time_domain ==
                                     beam_runner_api_pb2.TimeDomain.PROCESSING_TIME),
                    holds_watermark=family not in unheld))
    side_inputs = tuple(sorted({
        buffer_name(translations.create_buffer_id(pcoll))
        for pcoll in stage.side_inputs()}))
    return StageSpec(name=stage.name, inputs=tuple(inputs), outputs=tuple(outputs),
                     side_inputs=side_inputs, timer_families=tuple(timers),
                     stateful=stateful)


def grouping_spec(group_buffer: str) -> StageSpec:
    return StageSpec(
        name=grouping_stage(group_buffer),
        inputs=(InputSpec(grouping_stage(group_buffer), group_buffer, InputKind.STREAM),),
        outputs=(grouped_buffer(group_buffer),),
        timer_families=(TimerFamily(GROUPING_EVENT_TIMERS),
                        TimerFamily(GROUPING_PROCESSING_TIMERS, processing_time=True)),
        stateful=True)


def group_buffers(stages: Iterable[translations.Stage]) -> list[str]:
    """The GroupByKey buffers the stages write, in order."""
    out: list[str] = []
    for stage in stages:
        for t in stage.transforms:
            if (t.spec.urn == bundle_processor.DATA_OUTPUT_URN
                    and t.spec.payload.startswith(b"group:")):
                name = buffer_name(t.spec.payload)
                if name not in out:
                    out.append(name)
    return out


def build_stage_graph(stages: Iterable[translations.Stage],
                      streaming: bool = False) -> StageGraph:
    """Must run before Beam's execution context rewrites the data payloads.

    ``streaming``: each GroupByKey becomes a runner-side grouping stage (see
    ``execution.grouping``) between its writers and its reader. Each
    PairWithTiming is a runner-side stage too (``preprocess.timing``).
    """
    stage_list = list(stages)
    specs = [stage_spec(s, streaming) for s in stage_list]
    specs += [timing_spec(t) for t in timing_transforms(stage_list)]
    if streaming:
        specs += [grouping_spec(b) for b in group_buffers(stage_list)]
    return StageGraph.of(specs)


def environments_of(stages: Iterable[translations.Stage]) -> Mapping[str, str]:
    return {s.name: s.environment or "" for s in stages}


def stage_label(stage: translations.Stage) -> str:
    """A readable name for a fused stage: its first and last transforms."""
    names = [t.unique_name for t in stage.transforms]
    if not names:
        return stage.name
    if len(names) == 1:
        return repr(names[0])
    return "%r ... %r (%d transforms)" % (names[0], names[-1], len(names))
