"""The driver loop with a fake bridge and fake pools: no processes, no Beam.

Like dask's worker state machine tests: the engine is real, the world around
it (workers, the Fn API) is scripted, and each test reads what the driver did.
"""
from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytest

from beam_gpu_runner.engine.element_manager import ElementManager
from beam_gpu_runner.engine.events import (
    Bundle, BundleSplit, BundleSucceeded, Drain, SplitRefused)
from beam_gpu_runner.engine.graph import InputKind, InputSpec, StageGraph, StageSpec
from beam_gpu_runner.engine.sizing import SequenceDivider, SplitPolicy
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP
from beam_gpu_runner.execution.driver import Driver
from beam_gpu_runner.execution.errors import JobCancelledError, JobFailedError
from beam_gpu_runner.workers.errors import WorkerLostError


@dataclass
class TestingWorker:
    __test__ = False
    worker_id: str
    lost: Optional[str] = None
    process: Any = None


@dataclass
class TestingAttempt:
    """Runs ``behaviour(plan, worker)`` (the stage's scripted work)."""

    __test__ = False
    plan: Any
    worker: TestingWorker
    behaviour: Callable[["TestingAttempt"], Any]
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def run(self) -> Any:
        self.started.set()
        return self.behaviour(self)


class TestingBridge:
    """Payloads are tuples of items; each stage maps an item to outputs."""

    __test__ = False

    def __init__(self, behaviours: dict[str, Callable[[TestingAttempt], Any]]) -> None:
        self.behaviours = behaviours
        self.attempts: list[TestingAttempt] = []
        self.splits: list[tuple[str, float]] = []
        self.split_answer: Optional[Callable[[Bundle, TestingAttempt, float], Any]] = None

    def plan(self, bundle: Bundle) -> Bundle:
        return bundle

    def attempt(self, plan: Bundle, worker: TestingWorker) -> TestingAttempt:
        attempt = TestingAttempt(plan, worker, self.behaviours[plan.stage])
        self.attempts.append(attempt)
        return attempt

    def succeeded(self, bundle: Bundle, plan: Bundle, result: Any) -> BundleSucceeded:
        return BundleSucceeded(bundle.id, produced=result or {})

    def split(self, bundle: Bundle, attempt: TestingAttempt, fraction: float) -> Any:
        self.splits.append((bundle.id, fraction))
        assert self.split_answer is not None
        return self.split_answer(bundle, attempt, fraction)


class TestingPool:
    """Runs each submitted function on its own thread with a fresh worker."""

    __test__ = False

    def __init__(self, name: str, fail_start: Optional[Exception] = None) -> None:
        self.name = name
        self.fail_start = fail_start
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        self.workers = 0

    def submit(self, fn: Callable[[TestingWorker], Any]) -> concurrent.futures.Future:
        def run() -> Any:
            if self.fail_start is not None:
                raise self.fail_start
            self.workers += 1
            return fn(TestingWorker("%s-w%d" % (self.name, self.workers)))
        return self.executor.submit(run)


def items(bundle: Bundle) -> list[str]:
    return [x for payloads in bundle.inputs.values() for p in payloads for x in p]


def two_stage_graph(capacity: int = 2, divisible: bool = True, **gpu_flags: Any
                    ) -> StageGraph:
    return StageGraph.of([
        StageSpec("Read", (InputSpec("impulse", "impulse", InputKind.IMPULSE),), ("a",),
                  pool="cpu"),
        StageSpec("Gpu", (InputSpec("in", "a", InputKind.STREAM),), ("b",), pool="gpu",
                  divisible=divisible, **gpu_flags),
        StageSpec("Sink", (InputSpec("sink_in", "b", InputKind.STREAM),), (), pool="cpu"),
    ], pools={"cpu": 2, "gpu": capacity})


def run_job(graph: StageGraph, bridge: TestingBridge, pools: dict[str, TestingPool],
            policy: Optional[SplitPolicy] = None, timeout: float = 30.0,
            before: Optional[Callable[[Driver], None]] = None) -> tuple[Driver, list]:
    engine = ElementManager(graph, clock=__import__("time").time,
                            divider=SequenceDivider(), split_policy=policy)
    engine.add_initial("Read", {"impulse": (("go",),)})
    observed: list = []
    driver = Driver(engine, bridge, {}, pools,
                    {s.name: s.pool for s in graph.stages if s.pool},
                    labels={"Gpu": "'Classify'"},
                    observe=lambda e: observed.append(e.in_flight()))
    if before is not None:
        before(driver)
    errors: list[BaseException] = []

    def main() -> None:
        try:
            driver.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the driver did not finish within %ss" % timeout
    if errors:
        raise errors[0]
    return driver, observed


def read_then(n: int) -> Callable[[TestingAttempt], Any]:
    return lambda a: {"a": (tuple("e%d" % i for i in range(n)),)}


def test_outputs_flow_through_the_stages_and_the_job_finishes():
    sunk: list[str] = []
    bridge = TestingBridge({
        "Read": read_then(6),
        "Gpu": lambda a: {"b": (tuple(x.upper() for x in items(a.plan)),)},
        "Sink": lambda a: sunk.extend(items(a.plan)),
    })
    pools = {"cpu": TestingPool("cpu"), "gpu": TestingPool("gpu")}
    run_job(two_stage_graph(), bridge, pools)
    assert sorted(sunk) == ["E%d" % i for i in range(6)]
    # The six elements were cut for the two places of the GPU pool.
    assert sorted(len(items(a.plan)) for a in bridge.attempts if a.plan.stage == "Gpu") == [3, 3]


def test_a_user_error_fails_the_job_naming_the_stage_by_its_label():
    def boom(a: TestingAttempt) -> Any:
        raise RuntimeError("ZeroDivisionError: division by zero [while running 'Classify']")

    bridge = TestingBridge({"Read": read_then(1), "Gpu": boom, "Sink": lambda a: None})
    with pytest.raises(JobFailedError) as failure:
        run_job(two_stage_graph(), bridge, {"cpu": TestingPool("cpu"),
                                            "gpu": TestingPool("gpu")})
    text = str(failure.value)
    assert text.startswith("ZeroDivisionError")   # the worker's error first
    assert "failed in stage 'Classify'" in text and "attempt 1" in text


def test_a_lost_worker_is_retried_on_another():
    tries: list[str] = []

    def flaky(a: TestingAttempt) -> Any:
        tries.append(a.worker.worker_id)
        if len(tries) == 1:
            raise WorkerLostError("worker %s died: killed by signal 9" % a.worker.worker_id)
        return {}

    bridge = TestingBridge({"Read": read_then(1), "Gpu": flaky, "Sink": lambda a: None})
    run_job(two_stage_graph(), bridge, {"cpu": TestingPool("cpu"), "gpu": TestingPool("gpu")})
    assert len(tries) == 2 and tries[0] != tries[1]


def test_a_pool_that_cannot_start_a_worker_fails_the_job():
    bridge = TestingBridge({"Read": read_then(1), "Gpu": lambda a: {},
                            "Sink": lambda a: None})
    with pytest.raises(JobFailedError, match="no GPU left"):
        run_job(two_stage_graph(), bridge,
                {"cpu": TestingPool("cpu"),
                 "gpu": TestingPool("gpu", fail_start=RuntimeError("no GPU left"))})


def test_a_straggler_is_split_and_its_residual_runs_on_the_idle_place():
    """One bundle of 4 elements on a pool of 2 places: the engine asks it to
    split; the split's answer reaches the engine before the bundle ends, and
    every element is processed exactly once."""
    processed: list[str] = []
    lock = threading.Lock()

    def gpu(a: TestingAttempt) -> Any:
        if a.plan.id == first_gpu[0]:
            a.release.wait(10)   # the straggler waits until it was split
            mine = items(a.plan)[:1]
        else:
            mine = items(a.plan)
        with lock:
            processed.extend(mine)
        return {}

    first_gpu: list[str] = []

    def read(a: TestingAttempt) -> Any:
        return {"a": (("x0", "x1", "x2", "x3"),)}

    bridge = TestingBridge({"Read": read, "Gpu": gpu, "Sink": lambda a: None})

    def answer(bundle: Bundle, attempt: TestingAttempt, fraction: float) -> Any:
        attempt.release.set()
        if len(bridge.splits) > 1:   # it kept only x0: nothing left to give
            return SplitRefused(bundle.id)
        return BundleSplit(bundle.id, primary={"in": (("x0",),)},
                           residual={"in": (tuple(items(bundle)[1:]),)})

    bridge.split_answer = answer
    graph = StageGraph.of([
        StageSpec("Read", (InputSpec("impulse", "impulse", InputKind.IMPULSE),), ("a",),
                  pool="cpu"),
        StageSpec("Gpu", (InputSpec("in", "a", InputKind.STREAM),), (), pool="gpu",
                  divisible=False, dynamic_split=True),
    ], pools={"cpu": 1, "gpu": 2})
    original_attempt = bridge.attempt

    def remember(plan: Bundle, worker: TestingWorker) -> TestingAttempt:
        if plan.stage == "Gpu" and not first_gpu:
            first_gpu.append(plan.id)
        return original_attempt(plan, worker)

    bridge.attempt = remember   # type: ignore[method-assign]
    run_job(graph, bridge, {"cpu": TestingPool("cpu"), "gpu": TestingPool("gpu")},
            policy=SplitPolicy(min_runtime_s=0.0))
    assert bridge.splits and bridge.splits[0][1] == pytest.approx(0.5)
    assert sorted(processed) == ["x0", "x1", "x2", "x3"]   # each once


def test_a_refused_split_leaves_the_bundle_running():
    def gpu(a: TestingAttempt) -> Any:
        a.release.wait(10)
        return {}

    bridge = TestingBridge({"Read": lambda a: {"a": (("x0",),)}, "Gpu": gpu,
                            "Sink": lambda a: None})

    def refuse(bundle: Bundle, attempt: TestingAttempt, fraction: float) -> Any:
        attempt.release.set()
        return SplitRefused(bundle.id)

    bridge.split_answer = refuse
    run_job(two_stage_graph(capacity=2, dynamic_split=True), bridge,
            {"cpu": TestingPool("cpu"), "gpu": TestingPool("gpu")},
            policy=SplitPolicy(min_runtime_s=0.0, max_refusals=1))
    assert len(bridge.splits) == 1


def test_cancel_stops_the_loop():
    blocked = threading.Event()

    def gpu(a: TestingAttempt) -> Any:
        blocked.set()
        a.release.wait(5)
        return {}

    bridge = TestingBridge({"Read": read_then(1), "Gpu": gpu, "Sink": lambda a: None})

    def cancel_when_running(driver: Driver) -> None:
        threading.Thread(target=lambda: (blocked.wait(10), driver.cancel())).start()

    with pytest.raises(JobCancelledError):
        run_job(two_stage_graph(), bridge,
                {"cpu": TestingPool("cpu"), "gpu": TestingPool("gpu")},
                before=cancel_when_running)


def test_a_drain_reaches_the_engine():
    seen: list[Any] = []
    bridge = TestingBridge({"Read": read_then(1), "Gpu": lambda a: {},
                            "Sink": lambda a: None})
    engine_handle = ElementManager.handle

    def spy(self: ElementManager, event: Any) -> Any:
        seen.append(event)
        return engine_handle(self, event)

    original = ElementManager.handle
    ElementManager.handle = spy   # type: ignore[method-assign]
    try:
        run_job(two_stage_graph(), bridge,
                {"cpu": TestingPool("cpu"), "gpu": TestingPool("gpu")},
                before=lambda d: d.drain())
    finally:
        ElementManager.handle = original   # type: ignore[method-assign]
    assert any(isinstance(e, Drain) for e in seen)


def test_runner_side_stages_run_on_the_driver_thread_with_the_engines_time():
    calls: list[tuple[str, Any]] = []

    class Doubler:
        def run(self, bundle: Bundle, time: Any) -> BundleSucceeded:
            calls.append((threading.current_thread().name, time))
            return BundleSucceeded(bundle.id, produced={"b": (tuple(items(bundle)) * 2,)})

    sunk: list[str] = []
    bridge = TestingBridge({"Read": read_then(2), "Sink": lambda a: sunk.extend(items(a.plan))})
    graph = StageGraph.of([
        StageSpec("Read", (InputSpec("impulse", "impulse", InputKind.IMPULSE),), ("a",),
                  pool="cpu"),
        StageSpec("Double", (InputSpec("Double", "a", InputKind.STREAM),), ("b",)),
        StageSpec("Sink", (InputSpec("sink_in", "b", InputKind.STREAM),), (), pool="cpu"),
    ], pools={"cpu": 2})
    engine = ElementManager(graph, clock=__import__("time").time, divider=SequenceDivider())
    engine.add_initial("Read", {"impulse": (("go",),)})
    driver = Driver(engine, bridge, {"Double": Doubler()},
                    {"cpu": TestingPool("cpu")}, {"Read": "cpu", "Sink": "cpu"}, labels={})
    thread = threading.Thread(target=driver.run, name="the-driver")
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert sorted(sunk) == ["e0", "e0", "e1", "e1"]
    [(name, time)] = calls
    # Its own input, being processed, still holds its input watermark.
    assert name == "the-driver" and time.input_watermark < MAX_TIMESTAMP


class TestingProcess:
    """A worker's process for ``worker_lost``; ``wait`` is how long it waited."""
    __test__ = False

    def __init__(self, alive: bool) -> None:
        self.alive = alive
        self.waited: list[float] = []

    def wait(self, timeout: float) -> None:
        self.waited.append(timeout)

    def is_alive(self) -> bool:
        return self.alive


@dataclass
class TestingLostWorker:
    __test__ = False
    process: TestingProcess
    lost: Optional[str] = None


def test_a_failure_the_worker_reported_is_not_a_lost_worker_and_costs_no_wait():
    from beam_gpu_runner.bridge.fnapi import BundleError
    from beam_gpu_runner.execution.driver import worker_lost

    worker = TestingLostWorker(TestingProcess(alive=True))
    assert not worker_lost(worker, BundleError("ZeroDivisionError in step Map"))
    assert worker.process.waited == []
    # a broken channel: the process is given a moment to be seen dead
    dead = TestingLostWorker(TestingProcess(alive=False))
    assert worker_lost(dead, RuntimeError("channel closed"))
    assert dead.process.waited == [1.0]
    assert worker_lost(TestingLostWorker(TestingProcess(True), lost="died"),
                       RuntimeError("x"))
