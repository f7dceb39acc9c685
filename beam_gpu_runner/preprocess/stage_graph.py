"""Beam's fused stages -> the engine's string-id stage graph, with labels.

Each fused stage becomes a ``StageSpec`` whose inputs and outputs are the
text of their ``BufferId``s. A streaming job gets a runner-side grouping stage
per GroupByKey (between its writers and its reader), and every job a
runner-side stage per PairWithTiming. Pools are not known here: the runner
assigns them (``JobGraph.with_pools``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional, Sequence

from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.utils import proto_utils

from beam_gpu_runner.bridge.beam import (
    DATA_INPUT_URN, DATA_OUTPUT_URN, IMPULSE_BUFFER, PAR_DO_URNS, Stage, create_buffer_id)
from beam_gpu_runner.bridge.buffers import BufferId, BufferKind
from beam_gpu_runner.bridge.bundles import timer_family_key
from beam_gpu_runner.bridge.reverse_test_stream import unheld_timer_families
from beam_gpu_runner.bridge.runner_stages import (
    GROUPING_EVENT_TIMERS, GROUPING_PROCESSING_TIMERS)
from beam_gpu_runner.preprocess.chaining import SDF_PROCESS_URN, chained_transforms
from beam_gpu_runner.engine.graph import (
    InputKind, InputSpec, StageGraph, StageSpec, TimerFamily)
from beam_gpu_runner.preprocess.pair_with_timing import read_buffer, timing_spec, timing_transforms


def is_streaming(components: beam_runner_api_pb2.Components) -> bool:
    """A pipeline with an unbounded PCollection runs as a streaming job."""
    unbounded = beam_runner_api_pb2.IsBounded.UNBOUNDED
    return any(pc.is_bounded == unbounded for pc in components.pcollections.values())


def grouping_stage(buffer: BufferId) -> str:
    """The runner-side stage that groups ``buffer`` with triggers."""
    return "gbk[%s]" % buffer


def _data_input_kind(buffer: BufferId, streaming: bool) -> tuple[InputKind, BufferId]:
    if buffer.kind is BufferKind.IMPULSE:
        return InputKind.IMPULSE, buffer
    if buffer.kind is BufferKind.GROUP:
        # Streaming: fed, pane by pane, by the runner-side grouping stage.
        return (InputKind.STREAM, buffer.grouped()) if streaming else (
            InputKind.BARRIER, buffer)
    return InputKind.STREAM, buffer


def _is_bounded(components: beam_runner_api_pb2.Components, pcollection: str) -> bool:
    pcoll = components.pcollections.get(pcollection)
    return pcoll is None or pcoll.is_bounded != beam_runner_api_pb2.IsBounded.UNBOUNDED


def stage_spec(stage: Stage, components: beam_runner_api_pb2.Components,
               streaming: bool = False) -> StageSpec:
    stateful = stage.is_stateful()
    inputs: list[InputSpec] = []
    outputs: list[str] = []
    timers: list[TimerFamily] = []
    bounded = True
    splittable_dofn = False
    for t in stage.transforms:
        if t.spec.urn == DATA_INPUT_URN:
            kind, buffer = _data_input_kind(BufferId.parse(t.spec.payload), streaming)
            inputs.append(InputSpec(t.unique_name, str(buffer), kind))
            continue
        if t.spec.urn == DATA_OUTPUT_URN:
            outputs.append(str(BufferId.parse(t.spec.payload)))
            continue
        bounded = bounded and all(_is_bounded(components, p) for p in t.outputs.values())
        splittable_dofn = splittable_dofn or t.spec.urn == SDF_PROCESS_URN
        if t.spec.urn in PAR_DO_URNS:
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
        str(BufferId.parse(create_buffer_id(pcoll))) for pcoll in stage.side_inputs()}))
    divisible = not stateful and not timers
    return StageSpec(name=stage.name, inputs=tuple(inputs), outputs=tuple(outputs),
                     side_inputs=side_inputs, timer_families=tuple(timers),
                     stateful=stateful, divisible=divisible,
                     dynamic_split=divisible and bounded,
                     checkpoints=splittable_dofn and not bounded)


def grouping_spec(buffer: BufferId) -> StageSpec:
    name = grouping_stage(buffer)
    return StageSpec(
        name=name,
        inputs=(InputSpec(name, str(buffer), InputKind.STREAM),),
        outputs=(str(buffer.grouped()),),
        timer_families=(TimerFamily(GROUPING_EVENT_TIMERS),
                        TimerFamily(GROUPING_PROCESSING_TIMERS, processing_time=True)),
        stateful=True)


def group_buffers(stages: Iterable[Stage]) -> list[BufferId]:
    """The GroupByKey buffers the stages write, in order."""
    out: list[BufferId] = []
    for stage in stages:
        for t in stage.transforms:
            if t.spec.urn == DATA_OUTPUT_URN:
                buffer = BufferId.parse(t.spec.payload)
                if buffer.kind is BufferKind.GROUP and buffer not in out:
                    out.append(buffer)
    return out


def user_transforms(stage: Stage) -> tuple[str, ...]:
    """The user's transforms fused into ``stage`` (not its data channels)."""
    return tuple(t.unique_name for t in stage.transforms
                 if t.spec.urn not in (DATA_INPUT_URN, DATA_OUTPUT_URN))


def stage_label(names: Sequence[str], fallback: str) -> str:
    """A readable name for a stage: its first and last user transforms."""
    if not names:
        return fallback
    if len(names) == 1:
        return repr(names[0])
    return "%r ... %r (%d transforms)" % (names[0], names[-1], len(names))


@dataclass(frozen=True)
class JobGraph:
    """The engine's stages of a job, and what the runner needs to know of them."""

    specs: tuple[StageSpec, ...]
    #: runner-side grouping stage -> the GROUP buffer it groups (streaming)
    groupings: Mapping[str, BufferId] = field(default_factory=dict)
    #: runner-side timing stage -> (PairWithTiming transform id, its output buffer)
    timings: Mapping[str, tuple[str, BufferId]] = field(default_factory=dict)
    #: stage -> the user's transforms in it, and a readable label
    transforms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    #: stage -> why unhinted transforms run on its accelerator workers
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def runner_side(self) -> frozenset[str]:
        return frozenset(self.groupings) | frozenset(self.timings)

    def with_pools(self, pool_of_stage: Mapping[str, str],
                   capacities: Mapping[str, int]) -> StageGraph:
        """The engine's graph, every pooled stage on its pool."""
        return StageGraph.of(
            [replace(spec, pool=pool_of_stage.get(spec.name)) for spec in self.specs],
            pools=capacities)


def build_job_graph(stages: Sequence[Stage], components: beam_runner_api_pb2.Components,
                    streaming: bool = False,
                    original: Optional[beam_runner_api_pb2.Components] = None) -> JobGraph:
    """Must run before Beam's execution context rewrites the data payloads.

    ``original``: the pipeline's components before fusion, to say which
    transforms chaining moved onto accelerator workers."""
    specs = [stage_spec(s, components, streaming) for s in stages]
    transforms = {s.name: user_transforms(s) for s in stages}
    labels = {s.name: stage_label(transforms[s.name], s.name) for s in stages}
    notes = {}
    if original is not None:
        ids = {t.unique_name: i for i, t in original.transforms.items()}
        for s in stages:
            chained = chained_transforms(transforms[s.name], s.environment, original, ids)
            if chained:   # named by what the user hinted
                hinted = [n for n in transforms[s.name] if n not in chained]
                labels[s.name] = "%s (+%d chained)" % (
                    stage_label(hinted, s.name), len(chained))
                notes[s.name] = (
                    "chained onto the accelerator workers of the hinted transforms in "
                    "this stage: %s (no hints of their own; --accelerator_chaining=off "
                    "keeps them apart)" % ", ".join(repr(n) for n in chained))
    timings = {}
    for transform_id in timing_transforms(stages):
        spec = timing_spec(transform_id)
        specs.append(spec)
        timings[spec.name] = (transform_id, read_buffer(transform_id))
        name = components.transforms[transform_id].unique_name
        transforms[spec.name] = (name,)
        labels[spec.name] = "%r (PairWithTiming, on the runner)" % name
    groupings = {}
    if streaming:
        for buffer in group_buffers(stages):
            spec = grouping_spec(buffer)
            specs.append(spec)
            groupings[spec.name] = buffer
            name = components.transforms[buffer.name].unique_name
            transforms[spec.name] = (name,)
            labels[spec.name] = "%r (GroupByKey, on the runner)" % name
    return JobGraph(tuple(specs), groupings, timings, transforms, labels, notes)


IMPULSE = str(BufferId.parse(IMPULSE_BUFFER))

__all__ = ["IMPULSE", "JobGraph", "build_job_graph", "grouping_stage", "is_streaming",
           "stage_label", "stage_spec", "user_transforms"]
