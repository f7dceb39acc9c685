"""One job: Beam's fused stages, run by the element manager on worker pools.

The driver thread owns the engine and Beam's execution context; bundles run
on pool threads, each on its own worker, and report back through a queue.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.runners.portability.fn_api_runner import worker_handlers as beam_wh
from apache_beam.runners.runner import PipelineState

from beam_gpu_runner.engine.element_manager import ElementManager
from beam_gpu_runner.engine.events import (
    Bundle, BundleFailed, BundleSucceeded, Drain, Event, Instruction, JobFailed,
    JobFinished, RunBundle, Tick)
from beam_gpu_runner.engine.graph import InputKind, StageGraph
from beam_gpu_runner.execution.arriving import ArrivingGroups, GroupsFactory, groups_factory
from beam_gpu_runner.execution.attempt import AttemptResult, run_attempt
from beam_gpu_runner.execution.errors import (
    JobCancelledError, JobFailedError, JobNotDrainableError)
from beam_gpu_runner.execution.grouping import StreamingGroupByKey, grouping_for
from beam_gpu_runner.execution.metrics import consolidate
from beam_gpu_runner.execution.partitioned import merge_results, split_grouped
from beam_gpu_runner.execution.results import ResidualBuffer, ResultCollector
from beam_gpu_runner.execution.test_stream import build_script
from beam_gpu_runner.execution.timing import PairWithTimingStage, timing_for
from beam_gpu_runner.preprocess.drain import truncating_variant
from beam_gpu_runner.preprocess.stage_graph import (
    IMPULSE, build_stage_graph, group_buffers, grouping_stage, is_streaming,
    split_timer_family_key, stage_label)
from beam_gpu_runner.preprocess.timing import timing_stage, timing_transforms
from beam_gpu_runner.workers.errors import WorkerLostError
from beam_gpu_runner.workers.pool import PoolKey, WorkerFactory, WorkerPool

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPlan:
    """What the runner decided before execution: stages, pools, sizes."""

    stage_context: translations.TransformContext
    stages: list[translations.Stage]
    pool_of_stage: Mapping[str, PoolKey]
    pool_sizes: Mapping[PoolKey, int]
    #: --streaming: GroupByKey follows triggers as input arrives, even when
    #: every source is bounded (otherwise only unbounded pipelines do).
    streaming: bool = False
    #: bundles each worker of a pool runs at once (1 when absent)
    bundles_per_worker: Mapping[PoolKey, int] = field(default_factory=dict)


@dataclass
class _Outcome:
    bundle: Bundle
    result: Optional[AttemptResult] = None
    inputs: Mapping[str, beam_exec.PartitionableBuffer] = field(default_factory=dict)
    error: Optional[BaseException] = None
    lost: bool = False


_CANCEL = object()
_DRAIN = object()


class Job:
    """Runs a plan to completion on a driver thread; see the module docstring."""

    def __init__(
        self,
        plan: JobPlan,
        registry: Any,
        factory: WorkerFactory,
        max_attempts: int,
        num_workers: int,
        on_state: Optional[Callable[[str], None]] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._plan = plan
        self._registry = registry
        self._factory = factory
        self._max_attempts = max_attempts
        self._num_workers = num_workers
        self._on_state = on_state
        self._clock = clock
        self._events: "queue.Queue[Any]" = queue.Queue()
        self._cancelled = threading.Event()
        self._pools: dict[PoolKey, WorkerPool] = {}
        self._monitoring: dict[str, list] = {}
        self._labels = {s.name: stage_label(s) for s in plan.stages}
        self._lock = threading.Lock()
        #: drain() against the driver's own state changes (RUNNING, the end)
        self._state_lock = threading.Lock()
        self._drain_requested = False
        self.state = PipelineState.STOPPED
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._done = threading.Event()
        #: streaming GroupByKey stages, run on the driver thread
        self._groupings: dict[str, StreamingGroupByKey] = {}
        #: PairWithTiming stages, run on the driver thread
        self._timings: dict[str, PairWithTimingStage] = {}
        self._engine: Optional[ElementManager] = None
        self._context: Optional[beam_exec.FnApiRunnerExecutionContext] = None
        #: stage -> its truncating variant for draining (None: it has none)
        self._drain_contexts: dict[str, Optional[beam_exec.BundleContextManager]] = {}
        #: stage -> its GroupByKey outputs grouped as they arrive (batch only)
        self._grouped: dict[str, dict[bytes, GroupsFactory]] = {}

    # ---- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self._set_state(PipelineState.STARTING)
        self._thread = threading.Thread(target=self._main, name="gpu-runner-job",
                                        daemon=True)
        self._thread.start()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def cancel(self) -> None:
        if self._done.is_set():
            return
        self._set_state(PipelineState.CANCELLING)
        self._cancelled.set()
        self._events.put(_CANCEL)

    def drain(self) -> str:
        """Stop the sources, finish what they read, fire every window; the job
        then ends DRAINED by itself. Returns at once (the state: DRAINING).

        Splittable DoFns truncate their restrictions (``preprocess.drain``),
        the engine does the rest (``engine.events.Drain``). Raises
        ``JobNotDrainableError`` when the job ended or is being cancelled.
        """
        with self._state_lock:
            state = self.state
            if self._done.is_set() or PipelineState.is_terminal(state):
                raise JobNotDrainableError(
                    "cannot drain: the job already ended in state %s; a drain stops a "
                    "running job's sources and lets it finish what they read, so "
                    "there is nothing left to drain" % state)
            if self._cancelled.is_set():
                raise JobNotDrainableError(
                    "cannot drain: the job is being cancelled (state %s), which drops "
                    "the data it holds; wait_until_finish() waits for the cancel"
                    % state)
            if not self._drain_requested:
                self._drain_requested = True
                self._set_state(PipelineState.DRAINING)
                self._events.put(_DRAIN)
                _LOG.info("Draining the job (it was %s)", state)
            return self.state

    def monitoring_infos_by_stage(self) -> dict[str, list]:
        with self._lock:
            return {k: list(v) for k, v in self._monitoring.items()}

    def _set_state(self, state: str) -> None:
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                _LOG.warning("on_state callback failed for %s", state, exc_info=True)

    def _main(self) -> None:
        try:
            self._run()
            with self._state_lock:
                self._set_state(PipelineState.DRAINED if self._drain_requested
                                else PipelineState.DONE)
        except JobCancelledError as exc:
            self.error = exc
            self._set_state(PipelineState.CANCELLED)
        except BaseException as exc:  # the job's error is reported, not raised here
            self.error = exc
            _LOG.error("Job failed: %s", exc)
            self._set_state(PipelineState.FAILED)
        finally:
            self._done.set()

    # ---- the driver loop ----------------------------------------------------

    def _run(self) -> None:
        plan = self._plan
        streaming = plan.streaming or is_streaming(plan.stage_context.components)
        graph = build_stage_graph(plan.stages, streaming)
        groups = group_buffers(plan.stages) if streaming else []
        timings = timing_transforms(plan.stages)   # before setup() rewrites payloads
        context = beam_exec.FnApiRunnerExecutionContext(
            plan.stages, self._registry, plan.stage_context.components,
            plan.stage_context.safe_coders, plan.stage_context.data_channel_coders,
            self._num_workers)
        self._context = context
        try:
            context.setup()   # rewrites data-channel payloads to our endpoints
            initial = self._initial_inputs(context)
            stage_contexts = {s.name: context.bundle_manager_for(s) for s in plan.stages}
            for bcm in stage_contexts.values():
                self._registry.register_process_bundle_descriptor(
                    bcm.process_bundle_descriptor)
            for key, size in plan.pool_sizes.items():
                self._pools[key] = WorkerPool(key, size, self._factory,
                                              plan.bundles_per_worker.get(key, 1))
            utility_key = min(plan.pool_sizes, key=lambda k: k.requirements.needs_gpu)
            self._registry.set_utility_worker_factory(
                lambda: self._factory.start(utility_key), self._factory.stop)
            collector = ResultCollector(context, self._split_parts(graph),
                                        cut_by_window=not streaming)
            if not streaming:
                self._grouped = self._grouped_outputs(context, stage_contexts)
            engine = ElementManager(graph, self._clock, self._max_attempts)
            self._engine = engine
            for group in groups:
                self._groupings[grouping_stage(group)] = grouping_for(context, group)
            for transform_id in timings:
                self._timings[timing_stage(transform_id)] = timing_for(context, transform_id)
            # One worker per pool that runs bundles starts now, so the first
            # bundle of each stage does not wait for a process, imports, setup().
            for key in {plan.pool_of_stage[s.name] for s in plan.stages
                        if s.name not in self._groupings}:
                self._pools[key].prestart(1)
            script = build_script(context)
            if script is not None:
                engine.add_test_stream(script)
            for stage_name, inputs in initial:
                engine.add_initial(stage_name, inputs)
            with self._state_lock:
                if not self._drain_requested:   # DRAINING already says it runs
                    self._set_state(PipelineState.RUNNING)
            self._loop(engine, graph, context, stage_contexts, collector)
        finally:
            self._close()

    def _loop(self, engine: ElementManager, graph: StageGraph,
              context: beam_exec.FnApiRunnerExecutionContext,
              stage_contexts: Mapping[str, beam_exec.BundleContextManager],
              collector: ResultCollector) -> None:
        tokens = fn_runner.FnApiRunner.get_cache_token_generator(static=False)
        instructions: Iterable[Instruction] = engine.start()
        while True:
            for instruction in instructions:
                if isinstance(instruction, RunBundle):
                    self._dispatch(instruction.bundle, graph, stage_contexts, tokens)
                elif isinstance(instruction, JobFinished):
                    return
                elif isinstance(instruction, JobFailed):
                    raise JobFailedError(instruction.error) from instruction.cause
            wake = engine.next_wakeup()
            timeout = None if wake is None else max(0.0, wake - self._clock())
            try:
                item = self._events.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _CANCEL or self._cancelled.is_set():
                raise JobCancelledError("the job was cancelled")
            event: Event
            if item is None:
                event = Tick()
            elif item is _DRAIN:
                event = Drain()
            elif isinstance(item, (BundleSucceeded, BundleFailed)):
                event = item
            else:
                event = self._to_event(item, stage_contexts, collector)
            instructions = engine.handle(event)

    def _to_event(self, outcome: _Outcome,
                  stage_contexts: Mapping[str, beam_exec.BundleContextManager],
                  collector: ResultCollector) -> Event:
        bundle = outcome.bundle
        if outcome.error is not None:
            where = "stage %s, bundle %s, attempt %d" % (
                self._labels.get(bundle.stage, bundle.stage), bundle.id, bundle.attempt)
            if outcome.lost:
                return BundleFailed(bundle.id, "%s (%s)" % (outcome.error, where),
                                    retriable=True, cause=outcome.error)
            # The worker's error first: it names the user's exception and step.
            message = "%s\n[GpuRunner: failed in %s]" % (
                str(outcome.error).rstrip(), where)
            return BundleFailed(bundle.id, message, retriable=False, cause=outcome.error)
        assert outcome.result is not None
        with self._lock:
            previous = self._monitoring.get(bundle.stage, [])
            self._monitoring[bundle.stage] = list(consolidate(itertools.chain(
                outcome.result.response.process_bundle.monitoring_infos, previous)))
        return collector.to_event(bundle.id, self._context_for(bundle, stage_contexts),
                                  outcome.result, outcome.inputs)

    # ---- dispatch -----------------------------------------------------------

    def _dispatch(self, bundle: Bundle, graph: StageGraph,
                  stage_contexts: Mapping[str, beam_exec.BundleContextManager],
                  tokens: Any) -> None:
        if bundle.stage in self._groupings:
            self._events.put(self._run_grouping(bundle))
            return
        if bundle.stage in self._timings:
            self._events.put(self._run_timing(bundle))
            return
        bcm = self._context_for(bundle, stage_contexts)
        inputs = self._build_inputs(bundle, graph, bcm)
        timers = self._build_timers(bundle, bcm)
        pool = self._pools[self._plan.pool_of_stage[bundle.stage]]
        _LOG.debug("Dispatching %s (attempt %d) to pool %s", bundle.id, bundle.attempt,
                   pool.key.describe())

        pieces = split_grouped(graph.stage(bundle.stage), inputs, pool.size)
        grouped = self._grouped.get(bundle.stage, {})

        def attempt(piece: Mapping[str, beam_exec.PartitionableBuffer]
                    ) -> Callable[[beam_wh.WorkerHandler], _Outcome]:
            def run(worker: beam_wh.WorkerHandler) -> _Outcome:
                try:
                    result = run_attempt(bcm, worker, piece, timers, tokens,
                                         grouped=grouped)
                    return _Outcome(bundle, result=result, inputs=inputs)
                except BaseException as exc:  # classified on the driver thread
                    return _Outcome(bundle, inputs=inputs, error=exc,
                                    lost=_worker_lost(worker, exc))
            return run

        # A grouped input may run as parts on several workers; the bundle's
        # outcome is reported once every part is done.
        outcomes: list[_Outcome] = []
        lock = threading.Lock()

        def report(f: Any) -> None:
            try:
                outcome = f.result()
            except BaseException as exc:  # could not even get a worker
                outcome = _Outcome(bundle, error=exc, lost=False)
            with lock:
                outcomes.append(outcome)
                if len(outcomes) < len(pieces):
                    return
            self._events.put(_merge_outcomes(bundle, inputs, outcomes))

        for piece in pieces:
            pool.submit(attempt(piece)).add_done_callback(report)

    def _context_for(self, bundle: Bundle,
                     stage_contexts: Mapping[str, beam_exec.BundleContextManager]
                     ) -> beam_exec.BundleContextManager:
        """The stage's bundle context; for a draining bundle of a stage that
        reads a splittable DoFn, the variant that truncates restrictions
        (built and registered with the workers on first use)."""
        bcm = stage_contexts[bundle.stage]
        if not bundle.drain:
            return bcm
        if bundle.stage not in self._drain_contexts:
            context = self._context
            assert context is not None
            variant = truncating_variant(bcm.stage, context.pipeline_components)
            drain_bcm = None
            if variant is not None:
                drain_bcm = beam_exec.BundleContextManager(
                    context, variant, bcm.num_workers, split_managers=())
                self._registry.register_process_bundle_descriptor(
                    drain_bcm.process_bundle_descriptor)
                _LOG.info("Draining: stage %s truncates its restrictions from now on",
                          self._labels.get(bundle.stage, bundle.stage))
            self._drain_contexts[bundle.stage] = drain_bcm
        return self._drain_contexts[bundle.stage] or bcm

    def _run_grouping(self, bundle: Bundle) -> Event:
        engine = self._engine
        assert engine is not None
        try:
            return self._groupings[bundle.stage].run(
                bundle, engine.input_watermark(bundle.stage),
                engine.watermark(bundle.stage), engine.now())
        except Exception as exc:   # user windowing/trigger code, or a bad coder
            return BundleFailed(bundle.id, "GroupByKey %s failed in bundle %s: %s: %s" % (
                bundle.stage, bundle.id, type(exc).__name__, exc),
                retriable=False, cause=exc)

    def _run_timing(self, bundle: Bundle) -> Event:
        engine = self._engine
        assert engine is not None
        try:
            return self._timings[bundle.stage].run(
                bundle, engine.watermark(bundle.stage), engine.now())
        except Exception as exc:   # a coder that cannot take the pair
            return BundleFailed(bundle.id, "PairWithTiming %s failed in bundle %s: %s: %s" % (
                bundle.stage, bundle.id, type(exc).__name__, exc),
                retriable=False, cause=exc)

    def _build_inputs(self, bundle: Bundle, graph: StageGraph,
                      bcm: beam_exec.BundleContextManager
                      ) -> dict[str, beam_exec.PartitionableBuffer]:
        spec = graph.stage(bundle.stage)
        inputs: dict[str, beam_exec.PartitionableBuffer] = {}
        for input_spec in spec.inputs:
            transform = input_spec.transform
            payloads = bundle.inputs.get(transform, ())
            grouped = (input_spec.buffer.startswith("group:")
                       and not any(isinstance(p, ResidualBuffer) for p in payloads))
            if grouped:
                buffer_id = input_spec.buffer.encode("utf-8")
                grouping = bcm.get_buffer(buffer_id, transform)
                # get_buffer caches it in the shared context; this one is ours.
                bcm.execution_context.pcoll_buffers.pop(buffer_id, None)
                for payload in payloads:
                    if isinstance(payload, ArrivingGroups):
                        grouping.extend(payload)   # grouped on arrival
                        continue
                    for chunk in payload:
                        grouping.append(chunk)
                inputs[transform] = grouping
            else:
                merged = beam_exec.ListBuffer(
                    None if input_spec.buffer == IMPULSE else bcm.get_input_coder_impl(transform))
                for payload in payloads:
                    for chunk in payload:
                        merged.append(chunk)
                inputs[transform] = merged
        return inputs

    def _build_timers(self, bundle: Bundle, bcm: beam_exec.BundleContextManager
                      ) -> dict[tuple[str, str], beam_exec.PartitionableBuffer]:
        timers: dict[tuple[str, str], beam_exec.PartitionableBuffer] = {}
        for family_key, payloads in bundle.timers.items():
            transform_id, family = split_timer_family_key(family_key)
            merged = beam_exec.ListBuffer(bcm.get_timer_coder_impl(transform_id, family))
            for payload in payloads:   # one encoded timer each
                merged.append(payload)
            timers[(transform_id, family)] = merged
        return timers

    @staticmethod
    def _grouped_outputs(context: beam_exec.FnApiRunnerExecutionContext,
                         stage_contexts: Mapping[str, beam_exec.BundleContextManager]
                         ) -> dict[str, dict[bytes, GroupsFactory]]:
        """Per stage, the GroupByKey inputs it writes that are grouped as they
        arrive (``execution.arriving``): those that go to their consumer whole."""
        factories: dict[bytes, Optional[GroupsFactory]] = {}
        grouped: dict[str, dict[bytes, GroupsFactory]] = {}
        for stage_name, bcm in stage_contexts.items():
            for buffer_id in set(bcm.stage_data_outputs.values()):
                if not buffer_id.startswith(b"group:"):
                    continue
                if buffer_id not in factories:
                    factories[buffer_id] = groups_factory(context, buffer_id)
                factory = factories[buffer_id]
                if factory is not None:
                    grouped.setdefault(stage_name, {})[buffer_id] = factory
        return grouped

    def _split_parts(self, graph: StageGraph) -> dict[str, int]:
        """Cut stream outputs into as many pieces as the consumer pool has workers."""
        parts: dict[str, int] = {}
        for stage in graph.stages:
            if stage.name not in self._plan.pool_of_stage:
                continue   # runner-side (streaming GroupByKey, PairWithTiming)
            size = self._plan.pool_sizes.get(self._plan.pool_of_stage[stage.name], 1)
            for input_spec in stage.inputs:
                if input_spec.kind is InputKind.STREAM and not stage.stateful:
                    parts[input_spec.buffer] = max(parts.get(input_spec.buffer, 1), size)
        return parts

    @staticmethod
    def _initial_inputs(context: beam_exec.FnApiRunnerExecutionContext
                        ) -> list[tuple[str, dict[str, tuple[Any, ...]]]]:
        """The impulses Beam's context.setup() queued, taken over by our engine."""
        initial = []
        queues = context.queues
        while len(queues.ready_inputs):
            stage_name, data_input = queues.ready_inputs.deque()
            initial.append((stage_name, {k: (v,) for k, v in data_input.data.items()}))
        while len(queues.watermark_pending_inputs):
            (stage_name, _), data_input = queues.watermark_pending_inputs.deque()
            initial.append((stage_name, {k: (v,) for k, v in data_input.data.items()}))
        return initial

    def _close(self) -> None:
        pools = list(self._pools.values())
        threads = [threading.Thread(target=p.close, daemon=True) for p in pools]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._registry.close()
        # A finished job keeps no execution context: it holds the job's
        # buffers and Beam's merging-window handles (a leak per job otherwise).
        self._context = None
        self._drain_contexts.clear()
        self._grouped.clear()
        self._groupings.clear()
        self._timings.clear()


def _merge_outcomes(bundle: Bundle, inputs: Mapping[str, beam_exec.PartitionableBuffer],
                    outcomes: list[_Outcome]) -> _Outcome:
    if len(outcomes) == 1:
        return outcomes[0]
    failed = [o for o in outcomes if o.error is not None]
    if failed:   # the worker's own error first; lost only if that is all
        first = next((o for o in failed if not o.lost), failed[0])
        return _Outcome(bundle, inputs=inputs, error=first.error, lost=first.lost)
    return _Outcome(bundle, result=merge_results([o.result for o in outcomes
                                                   if o.result is not None]),
                    inputs=inputs)


def _worker_lost(worker: beam_wh.WorkerHandler, exc: BaseException) -> bool:
    if isinstance(exc, WorkerLostError) or getattr(worker, "lost", None):
        return True
    process = getattr(worker, "process", None)
    if process is None:
        return False
    # The data channel may break a moment before the watcher sees the exit.
    wait = getattr(process, "wait", None)
    if wait is not None:
        wait(1.0)
    return not process.is_alive()


__all__ = ["Job", "JobPlan"]
