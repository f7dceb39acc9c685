"""The element manager: a pure state machine over stages (Prism-style).

Events in (a bundle succeeded or failed, time passed), instructions out (run
this bundle, the job finished or failed). No processes, no protos, no
threads: the driver in ``execution`` feeds it and carries out what it says.

Per stage it tracks pending input, input/output watermarks and holds, event-
and processing-time timers. Batch is the bounded case: watermarks jump from
MIN to MAX as upstream stages drain. Streaming adds holds below MAX from
residual watermarks and timers, with the same loop.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
from dataclasses import dataclass, field, replace
from typing import Hashable, Optional

from beam_gpu_runner.engine.events import (
    Bundle, BundleFailed, BundleSplit, BundleSucceeded, Drain, Event, Instruction,
    JobFailed, JobFinished, Payload, RunBundle, SplitBundle, SplitRefused, Tick,
    TimerUpdate, WindowedPayload)
from beam_gpu_runner.engine.graph import InputKind, StageGraph, StageSpec
from beam_gpu_runner.engine.sizing import Divider, SplitPolicy, plan_divisions, plan_splits
from beam_gpu_runner.engine.test_stream_script import (
    AdvanceProcessingTime, AdvanceWatermark, EmitElements, TestStreamScript)
from beam_gpu_runner.engine.timestamps import (
    MAX_TIMESTAMP, MIN_TIMESTAMP, Clock, Micros, fmt)

_LOG = logging.getLogger(__name__)


@dataclass
class _PendingTimer:
    update: TimerUpdate
    processing_time: bool


@dataclass(frozen=True)
class _Held:
    transform: str
    payload: Payload
    release_at: Micros
    hold: Micros


@dataclass
class _Running:
    """What the engine knows of a bundle in flight, for splitting it."""

    started: float
    split_pending: bool = False
    refusals: int = 0
    not_before: float = 0.0
    #: a checkpoint took its remainder (a stage that checkpoints)
    checkpointed: bool = False


@dataclass(frozen=True)
class StageStats:
    """Counts and watermarks of one stage (for status pages and logs)."""

    ready: int
    in_flight: int
    done: int
    retried: int
    split: int
    input_watermark: Micros
    output_watermark: Micros


@dataclass
class _StageState:
    spec: StageSpec
    ready: collections.deque[Bundle] = field(default_factory=collections.deque)
    #: (ready_at, seq, bundle): work that must wait for processing time
    delayed: list[tuple[float, int, Bundle]] = field(default_factory=list)
    #: BARRIER inputs held until the input watermark passes their release time
    barrier: list["_Held"] = field(default_factory=list)
    #: (family, key) -> the timer's latest setting
    timers: dict[tuple[str, Hashable], _PendingTimer] = field(default_factory=dict)
    in_flight: dict[str, Bundle] = field(default_factory=dict)
    #: key -> watermark hold from the stage's state for that key
    key_holds: dict[Hashable, Micros] = field(default_factory=dict)
    output_watermark: Micros = MIN_TIMESTAMP
    done: int = 0
    retried: int = 0
    split: int = 0

    def startable(self) -> int:
        """How many ready bundles may start now (stateful stages: one at a time)."""
        if self.spec.stateful:
            return 0 if self.in_flight else min(1, len(self.ready))
        return len(self.ready)

    def has_data_work(self) -> bool:
        return bool(self.ready or self.delayed or self.barrier
                    or any(b.inputs for b in self.in_flight.values()))

    def idle(self) -> bool:
        return not (self.ready or self.delayed or self.barrier
                    or self.timers or self.in_flight)

    def pending_input_hold(self) -> Micros:
        """The earliest hold of data bundles delivered from upstream and not
        yet done (not residuals of its own, not timers, not held barriers)."""
        bundles = list(self.ready) + list(self.in_flight.values())
        return min((b.hold for b in bundles if b.inputs and not b.residual),
                   default=MAX_TIMESTAMP)

    def hold(self) -> Micros:
        holds = [b.hold for b in self.ready]
        holds += [b.hold for _, _, b in self.delayed]
        holds += [b.hold for b in self.in_flight.values()]
        holds += [t.update.hold for t in self.timers.values()]
        holds += [h.hold for h in self.barrier]
        holds += self.key_holds.values()
        return min(holds, default=MAX_TIMESTAMP)


class ElementManager:
    """Schedules bundles of a stage graph; see the module docstring."""

    def __init__(self, graph: StageGraph, clock: Clock, max_attempts: int = 3,
                 divider: Optional[Divider] = None,
                 split_policy: Optional[SplitPolicy] = None) -> None:
        """``divider`` counts and cuts payloads (None: bundles are never cut or
        split); ``split_policy`` says when running bundles are split."""
        if max_attempts < 1:
            raise ValueError("ElementManager: max_attempts must be >= 1, got %r"
                             % max_attempts)
        self._graph = graph
        self._clock = clock
        self._max_attempts = max_attempts
        self._divider = divider
        self._policy = split_policy or SplitPolicy()
        #: bundle id -> when it started and how its splits went
        self._running: dict[str, _Running] = {}
        self._stages = {s.name: _StageState(s) for s in graph.stages}
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._bundles: dict[str, Bundle] = {}     # in flight, by id
        self._done = False
        #: A Drain arrived: see ``events.Drain``.
        self._draining = False
        #: A TestStream drives its outputs and, once added, processing time.
        self._script: Optional[TestStreamScript] = None
        self._test_time: Optional[float] = None
        self._timer_kind = {
            (s.name, t.family): t.processing_time
            for s in graph.stages for t in s.timer_families}
        self._unheld_timers = {
            (s.name, t.family) for s in graph.stages for t in s.timer_families
            if not t.holds_watermark}

    # ---- inputs -------------------------------------------------------------

    def add_initial(self, stage: str, inputs: dict[str, tuple[Payload, ...]]) -> None:
        """Seed a stage with its impulse (before the first ``start``)."""
        state = self._state(stage, "add_initial")
        state.ready.append(self._new_bundle(stage, inputs, MIN_TIMESTAMP))

    def add_test_stream(self, script: TestStreamScript) -> None:
        """Drive ``script.buffers`` from a TestStream; processing time becomes a
        test clock that starts at 0 (the epoch) and moves only with the script,
        as Beam's DirectRunner's TestClock does. Starting at the epoch matters:
        Beam's trigger driver hands a processing-time timer's timestamp to
        ``on_fire`` as the watermark, so a wall-clock start would make an early
        ``AfterProcessingTime`` firing look on time and close the window."""
        if self._script is not None:
            raise ValueError("ElementManager.add_test_stream: a pipeline may have at "
                             "most one TestStream (got a second for %s)"
                             % sorted(script.buffers))
        for buffer in script.buffers:
            if buffer in self._graph.producers:
                raise ValueError("ElementManager.add_test_stream: buffer %r already "
                                 "has producers %s" % (buffer, self._graph.producers[buffer]))
        self._script = script
        self._test_time = 0.0
        # A TestStream pipeline tests event-time behaviour step by step; its
        # expectations (Beam's own suites among them) assume each event's
        # elements stay together, one bundle, as on Beam's DirectRunner. Work
        # is not cut or split here: there is no throughput to gain.
        self._divider = None

    def now(self) -> float:
        """Processing time (seconds): the test clock under a TestStream."""
        return self._clock() if self._test_time is None else self._test_time

    def start(self) -> list[Instruction]:
        return self._schedule()

    def handle(self, event: Event) -> list[Instruction]:
        if self._done:
            return []
        if isinstance(event, BundleSucceeded):
            self._on_success(event)
        elif isinstance(event, BundleSplit):
            self._on_split(event)
        elif isinstance(event, SplitRefused):
            self._on_split_refused(event)
        elif isinstance(event, BundleFailed):
            failed = self._on_failure(event)
            if failed is not None:
                self._done = True
                return [failed]
        elif isinstance(event, Tick):
            pass
        elif isinstance(event, Drain):
            self._on_drain()
        else:  # pragma: no cover - typing guards this
            raise TypeError("ElementManager.handle: unknown event %r" % (event,))
        return self._schedule()

    # ---- queries ------------------------------------------------------------

    @property
    def graph(self) -> StageGraph:
        return self._graph

    def watermark(self, stage: str) -> Micros:
        return self._state(stage, "watermark").output_watermark

    def input_watermark(self, stage: str) -> Micros:
        return self._input_watermark(self._state(stage, "input_watermark").spec)

    def in_flight(self) -> int:
        return len(self._bundles)

    @property
    def draining(self) -> bool:
        return self._draining

    def next_wakeup(self) -> Optional[float]:
        """Processing time of the next delayed bundle or timer, of the next
        chance to split a running bundle for idle workers, or of the next
        checkpoint, if any."""
        times = [t for s in self._stages.values() for t, _, _ in s.delayed[:1]]
        if self._test_time is None:
            times += [t.update.fire_at / 1e6 for s in self._stages.values()
                      for t in s.timers.values() if t.processing_time]
        times += [self._split_time(self._running[b.id])
                  for pool, idle in self._free_places().items() if idle > 0
                  for b in self._split_candidates(pool, ignore_time=True)]
        times += [when for when, _ in self._checkpoint_candidates()]
        return min(times, default=None)

    def stage_stats(self, stage: str) -> StageStats:
        state = self._state(stage, "stage_stats")
        return StageStats(
            ready=len(state.ready) + len(state.delayed) + len(state.barrier),
            in_flight=len(state.in_flight), done=state.done, retried=state.retried,
            split=state.split, input_watermark=self._input_watermark(state.spec),
            output_watermark=state.output_watermark)

    def describe(self) -> str:
        lines = ["(draining)"] if self._draining else []
        for s in self._stages.values():
            lines.append(
                "%s: in_wm=%s out_wm=%s ready=%d delayed=%d barrier=%d timers=%d "
                "in_flight=%d" % (
                    s.spec.name, fmt(self._input_watermark(s.spec)),
                    fmt(s.output_watermark), len(s.ready), len(s.delayed),
                    len(s.barrier), len(s.timers),
                    len(s.in_flight)))
        return "\n".join(lines)

    # ---- transitions --------------------------------------------------------

    def _on_success(self, event: BundleSucceeded) -> None:
        bundle = self._pop_in_flight(event.bundle_id, "BundleSucceeded")
        state = self._stages[bundle.stage]
        state.done += 1
        # Computed while the bundle ran, this bounds what it produced from below.
        produced_hold = state.output_watermark
        for buffer, payloads in event.produced.items():
            payloads = tuple(p for p in payloads if p is not None)
            if not payloads:
                continue
            for consumer, transform in self._graph.consumers.get(buffer, ()):
                self._deliver(consumer, transform, payloads, produced_hold)
        if event.residuals:
            residual = replace(self._new_bundle(
                bundle.stage, dict(event.residuals), event.residual_hold), residual=True)
            # Draining: the rest of a restriction read before the drain is
            # truncated at once, not after the delay the source asked for.
            truncate_now = self._draining and not bundle.drain
            if event.resume_at > self._clock() and not truncate_now:
                heapq.heappush(state.delayed,
                               (event.resume_at, next(self._seq), residual))
            else:
                state.ready.append(residual)
        for update in event.timers:
            kind = (bundle.stage, update.family)
            if kind not in self._timer_kind:
                raise ValueError(
                    "BundleSucceeded: stage %r set timers of undeclared family %r"
                    % (bundle.stage, update.family))
            if update.payload is None:
                state.timers.pop((update.family, update.key), None)
            else:
                if kind in self._unheld_timers:
                    update = replace(update, hold=MAX_TIMESTAMP)
                state.timers[(update.family, update.key)] = _PendingTimer(
                    update, self._timer_kind[kind])
        for key, hold in event.holds.items():
            if hold >= MAX_TIMESTAMP:
                state.key_holds.pop(key, None)
            else:
                state.key_holds[key] = hold

    def _deliver(self, stage: str, transform: str, payloads: tuple[Payload, ...],
                 hold: Micros) -> None:
        state = self._stages[stage]
        spec = next(i for i in state.spec.inputs if i.transform == transform)
        for payload in payloads:
            release_at = MAX_TIMESTAMP
            if isinstance(payload, WindowedPayload):
                payload, release_at = payload.payload, payload.release_at
            if spec.kind is InputKind.BARRIER:
                state.barrier.append(_Held(transform, payload, release_at, hold))
            else:
                state.ready.append(self._new_bundle(stage, {transform: (payload,)}, hold))

    def _on_drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        waiting = 0
        for state in self._stages.values():
            waiting += len(state.delayed)
            for _, _, bundle in sorted(state.delayed):
                state.ready.append(bundle)
            state.delayed.clear()
        dropped = self._script.stop() if self._script is not None else 0
        _LOG.info("Draining: %d waiting residual(s) run now, %d TestStream event(s) "
                  "dropped, %d bundle(s) in flight", waiting, dropped, len(self._bundles))

    def _on_failure(self, event: BundleFailed) -> Optional[JobFailed]:
        bundle = self._pop_in_flight(event.bundle_id, "BundleFailed")
        if event.retriable and bundle.attempt < self._max_attempts:
            _LOG.warning("Bundle %s of stage %s failed (attempt %d of %d), retrying: %s",
                         bundle.id, bundle.stage, bundle.attempt, self._max_attempts,
                         event.error)
            self._stages[bundle.stage].ready.appendleft(
                replace(bundle, attempt=bundle.attempt + 1))
            self._stages[bundle.stage].retried += 1
            return None
        if event.retriable:
            error = ("bundle %s failed %d times (max_bundle_attempts=%d); "
                     "last error: %s" % (bundle.id, bundle.attempt,
                                         self._max_attempts, event.error))
        else:
            error = event.error
        return JobFailed(stage=bundle.stage, error=error, cause=event.cause)

    def _pop_in_flight(self, bundle_id: str, what: str) -> Bundle:
        bundle = self._in_flight(bundle_id, what)
        del self._bundles[bundle_id]
        del self._stages[bundle.stage].in_flight[bundle_id]
        self._running.pop(bundle_id, None)
        return bundle

    def _in_flight(self, bundle_id: str, what: str) -> Bundle:
        try:
            return self._bundles[bundle_id]
        except KeyError:
            raise ValueError("%s: bundle %r is not in flight" % (what, bundle_id)) from None

    # ---- splits of running bundles --------------------------------------------

    def _on_split(self, event: BundleSplit) -> None:
        bundle = self._in_flight(event.bundle_id, "BundleSplit")
        state = self._stages[bundle.stage]
        # A retry of the bundle runs only what it kept.
        primary = replace(bundle, inputs=dict(event.primary))
        self._bundles[bundle.id] = state.in_flight[bundle.id] = primary
        running = self._running[bundle.id]
        running.split_pending = False
        residual = {t: p for t, p in event.residual.items() if p}
        if not residual:
            return
        running.checkpointed = state.spec.checkpoints
        state.split += 1
        hold = bundle.hold if event.residual_hold is None else event.residual_hold
        state.ready.appendleft(replace(
            self._new_bundle(bundle.stage, residual, hold),
            residual=bundle.residual, drain=bundle.drain))
        _LOG.debug("Bundle %s of stage %s split; its residual is %s", bundle.id,
                   bundle.stage, state.ready[0].id)

    def _on_split_refused(self, event: SplitRefused) -> None:
        running = self._running.get(event.bundle_id)
        if running is None:
            return   # it ended before its answer came: nothing to split any more
        running.split_pending = False
        running.refusals += 1
        running.not_before = self._clock() + min(
            self._policy.retry_after_s * 2 ** (running.refusals - 1),
            max(self._policy.checkpoint_after_s, self._policy.retry_after_s))

    def _split_time(self, running: _Running) -> float:
        return max(running.started + self._policy.min_runtime_s, running.not_before)

    def _checkpoint_candidates(self) -> list[tuple[float, Bundle]]:
        """(when, bundle) for running bundles of stages that checkpoint. Once
        the job drains, bundles dispatched before it are checkpointed at once
        (their remainder comes back and runs truncated); draining bundles are
        left to finish."""
        out = []
        for state in self._stages.values():
            if not state.spec.checkpoints:
                continue
            for bundle in state.in_flight.values():
                running = self._running[bundle.id]
                if (running.split_pending or running.checkpointed or not bundle.inputs
                        or bundle.drain):
                    continue
                start = running.started if self._draining else (
                    running.started + self._policy.checkpoint_after_s)
                out.append((max(start, running.not_before), bundle))
        return out

    def _checkpoints(self) -> list[Instruction]:
        """Checkpoint bundles of unbounded splittable DoFns that ran long enough
        (``SplitBundle`` keeping nothing; a refusal is retried, see
        ``_on_split_refused``, without a limit: the bundle may never end)."""
        now = self._clock()
        out: list[Instruction] = []
        for when, bundle in self._checkpoint_candidates():
            if when <= now:
                self._running[bundle.id].split_pending = True
                out.append(SplitBundle(bundle.id, 0.0))
        return out

    def _split_candidates(self, pool: str, ignore_time: bool = False) -> list[Bundle]:
        """Running bundles of ``pool`` that may be asked to split, oldest first."""
        now = self._clock()
        out = []
        for state in self._stages.values():
            if state.spec.pool != pool or not state.spec.dynamic_split:
                continue
            for bundle in state.in_flight.values():
                running = self._running[bundle.id]
                if (running.split_pending or running.refusals >= self._policy.max_refusals
                        or not bundle.inputs or bundle.timers):
                    continue
                if ignore_time or self._split_time(running) <= now:
                    out.append(bundle)
        out.sort(key=lambda b: self._running[b.id].started)
        return out

    def _splits(self) -> list[Instruction]:
        if self._divider is None or self._draining:
            return []
        out: list[Instruction] = []
        for pool, idle in self._free_places().items():
            if idle <= 0 or self._startable(pool):
                continue
            for bundle, keep in plan_splits(idle, self._split_candidates(pool)):
                self._running[bundle.id].split_pending = True
                out.append(SplitBundle(bundle.id, keep))
        return out

    # ---- scheduling ---------------------------------------------------------

    def _schedule(self) -> list[Instruction]:
        while True:
            self._update_watermarks()
            for state in self._stages.values():
                self._release(state, self._clock(), self.now())
            out = self._dispatch_all()
            if out or self._bundles:
                # Dispatching changes holds only by moving work to in-flight.
                return out + self._splits() + self._checkpoints()
            # Quiet: the TestStream's next event, if any, then look again;
            # then timers that can no longer fire (their holds go with them).
            if not self._step_script() and not self._drop_final_processing_timers():
                break
        if all(s.idle() for s in self._stages.values()):
            self._done = True
            return [JobFinished()]
        if not self._bundles and self.next_wakeup() is None:
            self._done = True
            return [JobFailed(stage=None, error=(
                "ElementManager: no bundle can run and nothing is in flight; "
                "the pipeline is stuck:\n" + self.describe()))]
        return out

    def _step_script(self) -> bool:
        """Apply the TestStream's next event; False when there is none."""
        script = self._script
        if script is None or script.exhausted():
            return False
        event = script.pop()
        if isinstance(event, EmitElements):
            _LOG.debug("TestStream: %d element(s) to %s", event.count, event.buffer)
            for consumer, transform in self._graph.consumers.get(event.buffer, ()):
                self._deliver(consumer, transform, (event.payload,),
                              script.watermark(event.buffer))
        elif isinstance(event, AdvanceWatermark):
            _LOG.debug("TestStream: watermark to %s", fmt(event.to))
        elif isinstance(event, AdvanceProcessingTime):
            assert self._test_time is not None
            self._test_time += event.by
            _LOG.debug("TestStream: processing time +%.3fs", event.by)
        return True

    def _drop_final_processing_timers(self) -> bool:
        """Under a test clock that no event moves any more, processing-time
        timers of stages whose input is complete can never fire; while
        draining, those of stages whose input is complete have nothing left to
        act on (they would re-arm forever): drop them (True when some were)."""
        if self._test_time is None and not self._draining:
            return False
        dropped = False
        for state in self._stages.values():
            if state.has_data_work() or self._input_watermark(state.spec) < MAX_TIMESTAMP:
                continue
            for key in [k for k, t in state.timers.items() if t.processing_time]:
                _LOG.debug("Dropping processing-time timer %r of stage %s at the end "
                           "of its input", key, state.spec.name)
                del state.timers[key]
                dropped = True
        return dropped

    def _release(self, state: _StageState, now: float, processing_now: float) -> None:
        spec = state.spec
        in_wm = self._input_watermark(spec)
        while state.delayed and state.delayed[0][0] <= now:
            state.ready.append(heapq.heappop(state.delayed)[2])
        released = [h for h in state.barrier if h.release_at <= in_wm]
        if released:
            state.barrier = [h for h in state.barrier if h.release_at > in_wm]
            inputs: dict[str, list[Payload]] = {}
            for held in released:
                inputs.setdefault(held.transform, []).append(held.payload)
            state.ready.append(self._new_bundle(
                spec.name, {t: tuple(p) for t, p in inputs.items()},
                min(h.hold for h in released)))
        if not state.timers:
            return
        data_pending = state.has_data_work()
        due: list[tuple[str, Hashable]] = []
        for key, timer in state.timers.items():
            if timer.processing_time:
                fire = timer.update.fire_at / 1e6 <= processing_now
            else:
                fire = not data_pending and in_wm >= timer.update.fire_at
            if fire:
                due.append(key)
        if not due:
            return
        fired = [state.timers.pop(key) for key in due]
        timers: dict[str, list[Payload]] = {}
        for timer in fired:
            timers.setdefault(timer.update.family, []).append(timer.update.payload)
        state.ready.append(self._new_bundle(
            spec.name, {}, min(t.update.hold for t in fired),
            timers={k: tuple(v) for k, v in timers.items()}))

    def _dispatch_all(self) -> list[Instruction]:
        """Start what may start: every ready bundle of a runner-side stage; of a
        pooled stage as many as its pool has free places, downstream stages
        first (data already produced drains before more is made), after
        cutting ready bundles for idle places (``sizing.plan_divisions``)."""
        free = self._free_places()
        for pool, places in free.items():
            self._divide_ready(pool, places)
        counts: dict[str, int] = {}
        for spec in reversed(self._graph.stages):
            state = self._stages[spec.name]
            if not state.ready or not self._side_inputs_ready(spec):
                continue
            count = state.startable()
            if spec.pool is not None:
                count = min(count, free[spec.pool])
                free[spec.pool] -= count
            counts[spec.name] = count
        # Instructions in graph order (upstream first), whoever got the places.
        return [self._start(self._stages[spec.name],
                            self._stages[spec.name].ready.popleft())
                for spec in self._graph.stages for _ in range(counts.get(spec.name, 0))]

    def _start(self, state: _StageState, bundle: Bundle) -> RunBundle:
        if self._draining and not bundle.drain:
            bundle = replace(bundle, drain=True)
        state.in_flight[bundle.id] = bundle
        self._bundles[bundle.id] = bundle
        self._running[bundle.id] = _Running(started=self._clock())
        return RunBundle(bundle)

    def _free_places(self) -> dict[str, int]:
        busy = collections.Counter(
            pool for pool in (self._stages[b.stage].spec.pool for b in self._bundles.values())
            if pool is not None)
        return {pool: capacity - busy.get(pool, 0)
                for pool, capacity in self._graph.pools.items()}

    def _startable(self, pool: str) -> list[tuple[_StageState, Bundle]]:
        """Ready bundles of ``pool``'s stages that may start now, in dispatch order."""
        out = []
        for spec in reversed(self._graph.stages):
            state = self._stages[spec.name]
            if spec.pool == pool and state.ready and self._side_inputs_ready(spec):
                out += [(state, b) for b in list(state.ready)[:state.startable()]]
        return out

    def _divide_ready(self, pool: str, places: int) -> None:
        """Cut ready bundles of ``pool`` so that its idle places get work."""
        divider = self._divider
        if divider is None or places <= 0:
            return
        startable = self._startable(pool)
        sizes = [(b.id, self._divisible_elements(state, b)) for state, b in startable]
        plan = plan_divisions(sizes, places)
        for state, bundle in startable:
            parts = plan.get(bundle.id)
            if not parts:
                continue
            [(transform, payloads)] = bundle.inputs.items()
            pieces = divider.divide(payloads, parts)
            position = state.ready.index(bundle)
            del state.ready[position]
            for offset, piece in enumerate(pieces):
                state.ready.insert(position + offset, replace(
                    self._new_bundle(bundle.stage, {transform: piece}, bundle.hold),
                    residual=bundle.residual, drain=bundle.drain,
                    attempt=bundle.attempt))
            _LOG.debug("Bundle %s of stage %s cut into %d for idle workers of pool %s",
                       bundle.id, bundle.stage, len(pieces), pool)

    def _divisible_elements(self, state: _StageState, bundle: Bundle) -> int:
        if (self._divider is None or not state.spec.divisible or bundle.timers
                or len(bundle.inputs) != 1):
            return 0
        [payloads] = bundle.inputs.values()
        return self._divider.elements(payloads)

    def _side_inputs_ready(self, spec: StageSpec) -> bool:
        return all(self._buffer_watermark(b) >= MAX_TIMESTAMP for b in spec.side_inputs)

    # ---- watermarks ---------------------------------------------------------

    def _buffer_watermark(self, buffer: str) -> Micros:
        if self._script is not None and buffer in self._script.buffers:
            return self._script.watermark(buffer)
        producers = self._graph.producers.get(buffer, ())
        return min((self._stages[p].output_watermark for p in producers),
                   default=MAX_TIMESTAMP)

    def _input_watermark(self, spec: StageSpec) -> Micros:
        """Upstream output watermarks, held back by this stage's own pending
        input data (delivered, not yet processed), as Beam's model asks: a
        stage never sees its input watermark pass elements it has yet to read."""
        buffers = [i.buffer for i in spec.inputs if i.kind is not InputKind.IMPULSE]
        buffers += list(spec.side_inputs)
        upstream = min((self._buffer_watermark(b) for b in buffers), default=MAX_TIMESTAMP)
        return min(upstream, self._stages[spec.name].pending_input_hold())

    def _update_watermarks(self) -> None:
        # Stages arrive topologically sorted; iterate to a fixpoint anyway so
        # that an unsorted graph is still right (watermarks only move up).
        for _ in range(len(self._stages) + 1):
            changed = False
            for state in self._stages.values():
                new = min(self._input_watermark(state.spec), state.hold())
                if new > state.output_watermark:
                    state.output_watermark = new
                    changed = True
            if not changed:
                return

    # ---- helpers ------------------------------------------------------------

    def _new_bundle(self, stage: str, inputs: dict[str, tuple[Payload, ...]],
                    hold: Micros, timers: Optional[dict[str, tuple[Payload, ...]]] = None
                    ) -> Bundle:
        return Bundle(id="b%d" % next(self._ids), stage=stage,
                      inputs=inputs, timers=timers or {}, hold=hold)

    def _state(self, stage: str, what: str) -> _StageState:
        try:
            return self._stages[stage]
        except KeyError:
            raise ValueError("ElementManager.%s: unknown stage %r (known: %s)"
                             % (what, stage, sorted(self._stages))) from None
