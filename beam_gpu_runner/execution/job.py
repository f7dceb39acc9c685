"""One GpuRunner job: its lifecycle, its driver thread, its pools, its status.

``GpuJob`` is what a ``GpuPipelineResult`` (and, through it, the job server)
holds. ``start`` runs the job on a thread of its own: Beam's context is set
up (``bridge.context``), the engine gets the impulses and the TestStream
script, the pools start one worker each, and the driver loop
(``execution.driver``) runs until the engine says the job finished or failed.
Cancel and drain requests go through the shared lifecycle state machine
(``lifecycle``), which says what to do to the running driver.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import beam_gpu_runner.lifecycle as lifecycle
from beam_gpu_runner.bridge.beam import FnApiMetrics, Stage, TransformContext
from beam_gpu_runner.bridge.bundles import BundleBridge, PayloadDivider
from beam_gpu_runner.bridge.context import JobContext
from beam_gpu_runner.bridge.fnapi import AttemptPlan, AttemptResult
from beam_gpu_runner.bridge.grouped import GroupingMemory
from beam_gpu_runner.bridge.metrics import consolidate
from beam_gpu_runner.bridge.runner_stages import runner_stages
from beam_gpu_runner.bridge.test_stream_events import build_script
from beam_gpu_runner.engine.element_manager import ElementManager, StageStats
from beam_gpu_runner.engine.events import Bundle
from beam_gpu_runner.execution.driver import Driver
from beam_gpu_runner.engine.timestamps import MIN_TIMESTAMP
from beam_gpu_runner.execution.errors import (
    JobCancelledError, JobFailedError, JobNotDrainableError)
from beam_gpu_runner.preprocess.drain import truncating_variant
from beam_gpu_runner.preprocess.stage_graph import JobGraph
from beam_gpu_runner.status import JobStatus, MetricStatus, StageStatus, WorkerStatus
from beam_gpu_runner.workers.pool import PoolKey, WorkerFactory, WorkerPool

_LOG = logging.getLogger(__name__)

#: How often the driver publishes the engine's counts for ``status()``.
_SNAPSHOT_S = 0.25


@dataclass(frozen=True)
class PoolSpec:
    key: PoolKey
    size: int
    bundles_per_worker: int = 1

    @property
    def capacity(self) -> int:
        return self.size * self.bundles_per_worker


@dataclass(frozen=True)
class JobPlan:
    """What the runner decided before execution: stages, pools, sizes."""

    job_id: str
    name: str
    stages: tuple[Stage, ...]
    stage_context: TransformContext
    graph: JobGraph
    #: pool id -> its key, size and bundles per worker
    pools: Mapping[str, PoolSpec]
    #: pooled stage -> pool id (runner-side stages have none)
    pool_of_stage: Mapping[str, str]
    #: --streaming, or an unbounded PCollection: GroupByKey follows triggers
    streaming: bool = False
    #: stage -> its accelerator hint text ("" when none)
    hints: Mapping[str, str] = field(default_factory=dict)
    #: options the user set, for status pages (JSON-friendly values only)
    options: Mapping[str, str] = field(default_factory=dict)
    #: bytes of grouped data the driver may hold (--shuffle_memory_budget), and
    #: where the rest spills (--spill_dir)
    shuffle_memory_budget: int = 256 << 20
    spill_dir: Optional[str] = None


@dataclass
class _StageBook:
    """What the job saw of one stage's bundles."""

    monitoring: list[Any] = field(default_factory=list)
    elements_in: int = 0
    elements_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    workers: set[str] = field(default_factory=set)


class GpuJob:
    """See the module docstring. Thread-safe."""

    def __init__(self, plan: JobPlan, services: Any, factory: WorkerFactory,
                 max_attempts: int, clock: Callable[[], float] = time.time,
                 on_state: Optional[Callable[[str], None]] = None,
                 keep_logs: Optional[Callable[[], str]] = None) -> None:
        """``keep_logs``: the placement's, called when the job fails so that
        its workers' logs outlive it (returns where they are)."""
        self.plan = plan
        self._keep_logs = keep_logs
        self.logs_kept_in: Optional[str] = None
        self._services = services
        self._factory = factory
        self._max_attempts = max_attempts
        self._clock = clock
        self._on_state = on_state
        self._lock = threading.Lock()
        self._lifecycle = lifecycle.Lifecycle(job=plan.job_id)
        self._done = threading.Event()
        self._driver: Optional[Driver] = None
        self._pools: dict[str, WorkerPool] = {}
        self._books: dict[str, _StageBook] = {}
        self._snapshot: dict[str, StageStats] = {}
        self._snapshot_at = 0.0
        self.error: Optional[BaseException] = None
        self._when_done: list[Callable[[], None]] = []
        self.started_at = time.time()
        self.ended_at: Optional[float] = None

    # ---- lifecycle ----------------------------------------------------------------

    @property
    def state(self) -> str:
        with self._lock:
            return self._lifecycle.state

    def start(self) -> None:
        with self._lock:
            self._lifecycle.start()
        self._notify()
        threading.Thread(target=self._main, name="gpu-runner-job-%s" % self.plan.job_id,
                         daemon=True).start()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the job has ended (at once if it has)."""
        with self._lock:
            if not self._done.is_set():
                self._when_done.append(callback)
                return
        callback()

    def cancel(self) -> None:
        """Stop at once, dropping buffered data (does not wait)."""
        with self._lock:
            if lifecycle.is_terminal(self._lifecycle.state):
                return
            actions = self._lifecycle.cancel()
            driver = self._driver
        if driver is not None and lifecycle.Action.CANCEL in actions:
            driver.cancel()
        self._notify()

    def drain(self) -> str:
        """Stop the sources, finish what they read, fire every window; the job
        then ends DRAINED by itself. Returns at once (the state: DRAINING).

        Splittable DoFns truncate their restrictions (``preprocess.drain``),
        the engine does the rest (``engine.events.Drain``). Raises
        ``JobNotDrainableError`` when the job ended or is being cancelled.
        """
        with self._lock:
            try:
                actions = self._lifecycle.drain()
            except lifecycle.LifecycleError as exc:
                raise JobNotDrainableError(str(exc)) from None
            driver = self._driver
            state = self._lifecycle.state
        if driver is not None and lifecycle.Action.DRAIN in actions:
            _LOG.info("Draining job %s", self.plan.job_id)
            driver.drain()
        self._notify()
        return state

    def _notify(self) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(self.state)
        except Exception:
            _LOG.warning("on_state callback failed", exc_info=True)

    # ---- the job's thread -------------------------------------------------------------

    def _main(self) -> None:
        outcome = lifecycle.FAILED
        try:
            self._run()
            outcome = lifecycle.DONE
        except JobCancelledError as exc:
            self.error = exc
            outcome = lifecycle.CANCELLED
        except BaseException as exc:   # the job's error is reported, not raised here
            self.error = self._with_logs(exc)
            _LOG.error("Job %s failed: %s", self.plan.job_id, self.error)
        finally:
            self._close()
            with self._lock:
                self._lifecycle.finished(outcome)
                self.ended_at = time.time()
            self._notify()
            with self._lock:
                self._done.set()
                callbacks, self._when_done = self._when_done, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    _LOG.warning("A when_done callback of job %s failed", self.plan.job_id,
                                 exc_info=True)

    def _with_logs(self, error: BaseException) -> BaseException:
        """Keep the workers' logs of a failed job, and say where in its error."""
        if self._keep_logs is None:
            return error
        try:
            self.logs_kept_in = self._keep_logs()
        except Exception:
            _LOG.warning("Keeping the worker logs of job %s failed", self.plan.job_id,
                         exc_info=True)
            return error
        if isinstance(error, JobFailedError):
            kept = JobFailedError("%s\n[worker logs kept in %s]" % (error, self.logs_kept_in))
            kept.__cause__ = error.__cause__
            return kept
        return error

    def _run(self) -> None:
        plan = self.plan
        context = JobContext(
            plan.stages, plan.stage_context.components, plan.stage_context.safe_coders,
            plan.stage_context.data_channel_coders, self._services,
            self._services.register_process_bundle_descriptor, truncating_variant,
            GroupingMemory(plan.shuffle_memory_budget, plan.spill_dir))
        context.setup()   # rewrites data-channel payloads to our endpoints
        bridge = BundleBridge(context, plan.streaming)
        graph = plan.graph.with_pools(plan.pool_of_stage,
                                      {p: spec.capacity for p, spec in plan.pools.items()})
        engine = ElementManager(graph, self._clock, self._max_attempts,
                                divider=PayloadDivider())
        for stage_name, inputs in context.initial_inputs():
            engine.add_initial(stage_name, dict(inputs))
        script = build_script(context)
        if script is not None:
            engine.add_test_stream(script)
        for pool_id, spec in plan.pools.items():
            self._pools[pool_id] = WorkerPool(spec.key, spec.size, self._factory,
                                              spec.bundles_per_worker)
        utility = min(plan.pools.values(), key=lambda s: s.key.requirements.needs_gpu).key
        self._services.set_utility_worker_factory(
            lambda: self._factory.start(utility), self._factory.stop)
        # One worker per pool that runs bundles starts now, so the first bundle
        # of each stage does not wait for a process, imports, setup().
        for pool_id in set(plan.pool_of_stage.values()):
            self._pools[pool_id].prestart(1)
        driver = Driver(engine, bridge,
                        runner_stages(context, plan.graph.groupings, plan.graph.timings),
                        self._pools, plan.pool_of_stage, plan.graph.labels, self._clock,
                        on_result=self._record, observe=self._observe)
        with self._lock:
            self._driver = driver
            actions = self._lifecycle.execution_started()
        self._notify()
        if lifecycle.Action.CANCEL in actions:
            driver.cancel()
        if lifecycle.Action.DRAIN in actions:
            driver.drain()
        try:
            driver.run()
        finally:
            self._observe(engine, force=True)
            context.close()

    def _record(self, bundle: Bundle, plan: AttemptPlan, result: AttemptResult) -> None:
        """On the driver thread, for each successful attempt."""
        counts = result.element_counts
        with self._lock:
            book = self._books.setdefault(bundle.stage, _StageBook())
            book.monitoring = list(consolidate(
                list(result.monitoring_infos) + book.monitoring))
            book.elements_in += counts[0]
            book.elements_out += counts[1]
            book.bytes_in += sum(max(0, chunks.nbytes) for chunks in plan.inputs.values())
            book.bytes_out += result.bytes_out
            book.workers.add(result.worker_id)

    def _observe(self, engine: ElementManager, force: bool = False) -> None:
        """On the driver thread: publish the engine's counts for status()."""
        now = time.monotonic()
        if not force and now - self._snapshot_at < _SNAPSHOT_S:
            return
        snapshot = {s.name: engine.stage_stats(s.name) for s in engine.graph.stages}
        with self._lock:
            self._snapshot = snapshot
            self._snapshot_at = now

    def _close(self) -> None:
        pools = list(self._pools.values())
        threads = [threading.Thread(target=p.close, daemon=True) for p in pools]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._services.close()
        self._driver = None

    # ---- what it did ------------------------------------------------------------------

    def monitoring_infos_by_stage(self) -> dict[str, list[Any]]:
        with self._lock:
            return {stage: list(book.monitoring) for stage, book in self._books.items()}

    def status(self) -> JobStatus:
        plan = self.plan
        with self._lock:
            snapshot = dict(self._snapshot)
            books = {k: (b.elements_in, b.elements_out, b.bytes_in, b.bytes_out,
                         tuple(sorted(b.workers))) for k, b in self._books.items()}
            state = self._lifecycle.state
        stages = []
        for spec in plan.graph.specs:
            stats = snapshot.get(spec.name)
            e_in, e_out, b_in, b_out, workers = books.get(spec.name, (0, 0, 0, 0, ()))
            pool = plan.pool_of_stage.get(spec.name)
            stages.append(StageStatus(
                name=spec.name, label=plan.graph.labels.get(spec.name, spec.name),
                transforms=tuple(plan.graph.transforms.get(spec.name, ())),
                hint=plan.hints.get(spec.name, ""),
                pool=plan.pools[pool].key.describe() if pool else "",
                runner_side=pool is None, workers=workers,
                placement_note=plan.graph.notes.get(spec.name, ""),
                elements_in=e_in, elements_out=e_out, bytes_in=b_in, bytes_out=b_out,
                bundles_running=stats.in_flight if stats else 0,
                bundles_done=stats.done if stats else 0,
                bundles_retried=stats.retried if stats else 0,
                bundles_split=stats.split if stats else 0,
                input_watermark=_watermark(stats.input_watermark) if stats else None,
                output_watermark=_watermark(stats.output_watermark) if stats else None))
        error = self.error if state == lifecycle.FAILED else None
        return JobStatus(
            job_id=plan.job_id, name=plan.name, state=state, start_time=self.started_at,
            end_time=self.ended_at, streaming=plan.streaming, options=dict(plan.options),
            stages=tuple(stages), edges=_edges(plan.graph), workers=self._workers(),
            metrics=self._user_metrics(), error=str(error) if error else None,
            traceback="".join(traceback.format_exception(error)) if error else None,
            logs_kept_in=self.logs_kept_in)

    def _workers(self) -> tuple[WorkerStatus, ...]:
        out = []
        for pool in list(self._pools.values()):
            for worker in pool.workers():
                process = worker.process
                out.append(WorkerStatus(
                    worker_id=worker.worker_id, pool=pool.key.describe(),
                    host=getattr(process, "node_ip", None) or "localhost",
                    pid=getattr(process, "pid", None),
                    devices=tuple(self._factory_devices(worker.worker_id)),
                    state="lost" if worker.lost else "running"))
        return tuple(out)

    def _factory_devices(self, worker_id: str) -> list[str]:
        devices_of = getattr(self._factory, "devices_of", None)
        return list(devices_of(worker_id)) if devices_of is not None else []

    def _user_metrics(self) -> tuple[MetricStatus, ...]:
        results = FnApiMetrics(self.monitoring_infos_by_stage(),
                               user_metrics_only=True).query()
        out = []
        for kind, items in (("counter", results["counters"]),
                            ("distribution", results["distributions"]),
                            ("gauge", results["gauges"]),
                            ("string_set", results.get("string_sets", []))):
            for item in items:
                value = item.committed if item.committed is not None else item.attempted
                out.append(MetricStatus(
                    namespace=item.key.metric.namespace, name=item.key.metric.name,
                    kind=kind, step=item.key.step, value=_metric_value(kind, value)))
        return tuple(out)


def _watermark(micros: int) -> Optional[int]:
    return None if micros <= MIN_TIMESTAMP else micros


def _edges(graph: JobGraph) -> tuple[tuple[str, str], ...]:
    producers: dict[str, list[str]] = {}
    for spec in graph.specs:
        for buffer in spec.outputs:
            producers.setdefault(buffer, []).append(spec.name)
    edges = set()
    for spec in graph.specs:
        for buffer in [i.buffer for i in spec.inputs] + list(spec.side_inputs):
            for producer in producers.get(buffer, ()):
                edges.add((producer, spec.name))
    return tuple(sorted(edges))


def _metric_value(kind: str, value: Any) -> Any:
    if kind == "distribution" and value is not None:
        return {"count": value.count, "sum": value.sum, "min": value.min,
                "max": value.max, "mean": value.mean}
    if kind == "gauge" and value is not None:
        return {"value": value.value, "timestamp": float(value.timestamp)
                if value.timestamp is not None else None}
    if kind == "string_set" and value is not None:
        return sorted(value)
    return value


__all__ = ["GpuJob", "JobPlan", "PoolSpec"]
