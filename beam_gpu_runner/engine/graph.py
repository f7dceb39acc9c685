"""The stage graph the element manager schedules over: plain string ids only.

Built by ``preprocess`` from Beam's fused stages; tests build it by hand.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional


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
    #: The worker pool that runs its bundles (``StageGraph.pools`` says how
    #: many at once); None: a runner-side stage, run on the driver at once.
    pool: Optional[str] = None
    #: Its ready bundles may be cut by element across idle workers (no state,
    #: no timers: each element's output depends on that element alone).
    divisible: bool = False
    #: Its running bundles may be split when workers idle (divisible, and it
    #: reads no unbounded source: splitting an endless restriction would hold
    #: the watermark at the split's start).
    dynamic_split: bool = False
    #: It runs an unbounded splittable DoFn: a running bundle is checkpointed
    #: (split keeping nothing of its remainder) once it has run for
    #: ``SplitPolicy.checkpoint_after_s``, so that its output is committed and
    #: the watermark moves even when the DoFn never stops on its own (e.g.
    #: chained with a step slower than its source).
    checkpoints: bool = False


class GraphError(ValueError):
    """The stage graph is inconsistent (a bug in translation, not user input)."""


@dataclass(frozen=True)
class StageGraph:
    stages: tuple[StageSpec, ...]
    producers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    consumers: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    #: pool -> how many bundles it runs at once (workers x bundles per worker)
    pools: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stages: Iterable[StageSpec],
           pools: Optional[Mapping[str, int]] = None) -> "StageGraph":
        stage_list = tuple(stages)
        pools = dict(pools or {})
        for stage in stage_list:
            if stage.pool is not None and pools.get(stage.pool, 0) < 1:
                raise GraphError(
                    "StageGraph.of: stage %r runs on pool %r, whose capacity is %r; "
                    "give every pool a capacity >= 1 (pools: %s)"
                    % (stage.name, stage.pool, pools.get(stage.pool), sorted(pools)))
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
            stages=_topological(stage_list, producers),
            producers={k: tuple(v) for k, v in producers.items()},
            consumers={k: tuple(v) for k, v in consumers.items()},
            pools=pools)

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise GraphError("StageGraph.stage: no stage named %r" % name)


def _topological(stages: tuple[StageSpec, ...],
                 producers: Mapping[str, list[str]]) -> tuple[StageSpec, ...]:
    """Producers before consumers (side inputs too), otherwise in the given order."""
    by_name = {s.name: s for s in stages}
    upstream = {s.name: {p for spec in s.inputs if spec.kind is not InputKind.IMPULSE
                         for p in producers.get(spec.buffer, ()) if p != s.name}
                | {p for buf in s.side_inputs for p in producers.get(buf, ())
                   if p != s.name}
                for s in stages}
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(stages):
        ready = [s.name for s in stages
                 if s.name not in placed and upstream[s.name] <= placed]
        if not ready:   # a cycle: keep the given order for what is left
            ready = [s.name for s in stages if s.name not in placed]
        for name in ready:
            placed.add(name)
            done.append(name)
    return tuple(by_name[n] for n in done)
