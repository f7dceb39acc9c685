"""Beam's fused stages -> the engine's string-id StageGraph."""
from __future__ import annotations

from typing import Iterable, Mapping

from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.runners.worker import bundle_processor
from apache_beam.utils import proto_utils

from beam_gpu_runner.engine.graph import (
    InputKind, InputSpec, StageGraph, StageSpec, TimerFamily)

IMPULSE = translations.IMPULSE_BUFFER.decode("ascii")


def buffer_name(buffer_id: bytes) -> str:
    return buffer_id.decode("utf-8")


def timer_family_key(transform_id: str, family: str) -> str:
    """The engine's id for a timer family: unique within its stage."""
    return "%s\x1f%s" % (transform_id, family)


def split_timer_family_key(key: str) -> tuple[str, str]:
    transform_id, family = key.split("\x1f", 1)
    return transform_id, family


def stage_spec(stage: translations.Stage) -> StageSpec:
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
            inputs.append(InputSpec(t.unique_name, buffer_name(buffer_id), kind))
        elif t.spec.urn == bundle_processor.DATA_OUTPUT_URN:
            outputs.append(buffer_name(t.spec.payload))
        elif t.spec.urn in translations.PAR_DO_URNS:
            payload = proto_utils.parse_Bytes(
                t.spec.payload, beam_runner_api_pb2.ParDoPayload)
            for family, spec in payload.timer_family_specs.items():
                timers.append(TimerFamily(
                    timer_family_key(t.unique_name, family),
                    processing_time=(spec.time_domain ==
                                     beam_runner_api_pb2.TimeDomain.PROCESSING_TIME)))
    side_inputs = tuple(sorted({
        buffer_name(translations.create_buffer_id(pcoll))
        for pcoll in stage.side_inputs()}))
    return StageSpec(name=stage.name, inputs=tuple(inputs), outputs=tuple(outputs),
                     side_inputs=side_inputs, timer_families=tuple(timers),
                     stateful=stateful)


def build_stage_graph(stages: Iterable[translations.Stage]) -> StageGraph:
    """Must run before Beam's execution context rewrites the data payloads."""
    return StageGraph.of(stage_spec(s) for s in stages)


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
