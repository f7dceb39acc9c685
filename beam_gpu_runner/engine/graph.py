"""The stage graph the element manager schedules over: plain string ids only.

Built by ``preprocess`` from Beam's fused stages; tests build it by hand.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Mapping


class InputKind(enum.Enum):
    #: The stage's first input: one impulse element, given at start.
    IMPULSE = "impulse"
    #: Per-bundle hand-off: each producer bundle's output becomes consumer work.
    STREAM = "stream"
    #: Held until the input watermark passes (GroupByKey buffers, stateful
    #: stages), then handed over in one bundle.
    BARRIER = "barrier"


@dataclass(frozen=True)
class InputSpec:
    transform: str   # the stage's data-input transform id
    buffer: str      # the buffer (PCollection channel) it reads
    kind: InputKind


@dataclass(frozen=True)
class TimerFamily:
    family: str          # opaque id, unique within the stage
    processing_time: bool = False
    #: False: its timers do not hold the stage's output watermark (Beam
    #: Java's ``withNoOutputTimestamp``), whatever hold their updates carry.
    holds_watermark: bool = True


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...] = ()            # buffers written
    side_inputs: tuple[str, ...] = ()        # buffers read as side inputs
    timer_families: tuple[TimerFamily, ...] = ()
    #: Keyed state or timers: at most one bundle in flight at a time.
    stateful: bool = False


class GraphError(ValueError):
    """The stage graph is inconsistent (a bug in translation, not user input)."""


@dataclass(frozen=True)
class StageGraph:
    stages: tuple[StageSpec, ...]
    producers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    consumers: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, stages: Iterable[StageSpec]) -> "StageGraph":
        stage_list = tuple(stages)
        names = [s.name for s in stage_list]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise GraphError("StageGraph.of: duplicate stage names %s" % dupes)
        producers: dict[str, list[str]] = {}
        consumers: dict[str, list[tuple[str, str]]] = {}
        for stage in stage_list:
            for buf in stage.outputs:
                producers.setdefault(buf, []).append(stage.name)
            for spec in stage.inputs:
                if spec.kind is not InputKind.IMPULSE:
                    consumers.setdefault(spec.buffer, []).append(
                        (stage.name, spec.transform))
            families = [t.family for t in stage.timer_families]
            if len(set(families)) != len(families):
                raise GraphError(
                    "StageGraph.of: stage %r declares a timer family twice: %s"
                    % (stage.name, families))
        return cls(
            stages=stage_list,
            producers={k: tuple(v) for k, v in producers.items()},
            consumers={k: tuple(v) for k, v in consumers.items()})

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise GraphError("StageGraph.stage: no stage named %r" % name)
