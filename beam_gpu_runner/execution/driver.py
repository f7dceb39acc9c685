"""The driver loop: the engine's instructions carried out, outcomes fed back.

One thread owns the engine (a pure state machine). It takes the engine's
instructions (run a bundle, split a running one, the job finished or failed)
and carries them out:

* a bundle of a runner-side stage runs at once, on this thread;
* a bundle of a pooled stage is prepared here (``BundleRunner.prepare``),
  then runs on a pool thread with a worker the pool chose; its outcome comes
  back through the event queue and becomes an engine event here
  (``BundleRunner.succeeded``, or ``BundleFailed``: retriable when the worker
  was lost, the job's end when user code failed);
* a split is asked of the running attempt from a short-lived thread; its
  answer (``BundleSplit`` or ``SplitRefused``) is queued before the attempt's
  own outcome, so the engine always learns of a split first.

Between events the loop sleeps until the engine's next wake-up (a delayed
residual, a processing-time timer, a split worth trying) and tells it the
time moved on (``Tick``). ``cancel`` and ``drain`` are queued like events.
Nothing here knows Beam: ``BundleRunner`` (the bridge) and the pools do.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol

from beam_gpu_runner.bridge.fnapi import BundleError
from beam_gpu_runner.engine.element_manager import ElementManager
from beam_gpu_runner.engine.events import (
    Bundle, BundleFailed, BundleSucceeded, Drain, Event, Instruction,
    JobFailed, JobFinished, RunBundle, SplitBundle, SplitRefused, Tick)
from beam_gpu_runner.engine.timestamps import StageTime
from beam_gpu_runner.execution.errors import JobCancelledError, JobFailedError
from beam_gpu_runner.workers.errors import WorkerLostError

_LOG = logging.getLogger(__name__)


class Attempt(Protocol):
    def run(self) -> Any:
        """Run the bundle on its worker; the result, or raise."""


class BundleRunner(Protocol):
    """How bundles of pooled stages are prepared, run and read back (the bridge)."""

    def plan(self, bundle: Bundle) -> Any: ...

    def attempt(self, plan: Any, worker: Any) -> Attempt: ...

    def succeeded(self, bundle: Bundle, plan: Any, result: Any) -> BundleSucceeded: ...

    def split(self, bundle: Bundle, attempt: Any, fraction_of_remainder: float
              ) -> Event: ...


class RunnerStage(Protocol):
    def run(self, bundle: Bundle, time: StageTime) -> BundleSucceeded: ...


class Pool(Protocol):
    def submit(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(worker)`` on a pool thread; a Future of its result."""


#: Called on the driver thread for each successful attempt (metrics, stats).
ResultHook = Callable[[Bundle, Any, Any], None]

_CANCEL = object()
_DRAIN = object()


class _Running:
    """A pooled bundle in flight: its attempt once started, its split threads."""

    def __init__(self, bundle: Bundle, plan: Any) -> None:
        self.bundle = bundle
        self.plan = plan
        self.attempt: Optional[Any] = None
        self._lock = threading.Lock()
        self._finished = False
        self._splits: list[threading.Thread] = []

    def started(self, attempt: Any) -> None:
        with self._lock:
            self.attempt = attempt

    def split(self, ask: Callable[[Any], None]) -> bool:
        """Run ``ask(attempt)`` on a thread of its own; False when the attempt
        has not started or has ended (nothing to split)."""
        with self._lock:
            if self.attempt is None or self._finished:
                return False
            thread = threading.Thread(target=ask, args=(self.attempt,), daemon=True,
                                      name="split-%s" % self.bundle.id)
            thread.start()
            self._splits.append(thread)
        return True

    def finish(self) -> None:
        """No more splits; wait for those under way (their answers go first)."""
        with self._lock:
            self._finished = True
            threads = list(self._splits)
        for thread in threads:
            thread.join()


@dataclass
class _Done:
    running: _Running
    result: Any = None
    error: Optional[BaseException] = None
    lost: bool = False


class Driver:
    """See the module docstring. ``run`` on the thread that owns the engine."""

    def __init__(self, engine: ElementManager, bundles: BundleRunner,
                 runner_stages: Mapping[str, RunnerStage], pools: Mapping[str, Pool],
                 pool_of_stage: Mapping[str, str], labels: Mapping[str, str],
                 clock: Callable[[], float] = time.time,
                 on_result: Optional[ResultHook] = None,
                 observe: Optional[Callable[[ElementManager], None]] = None) -> None:
        """``on_result``: called for each successful attempt; ``observe``: after
        each event the engine handled (both on this thread)."""
        self._engine = engine
        self._bundles = bundles
        self._runner_stages = runner_stages
        self._pools = pools
        self._pool_of_stage = pool_of_stage
        self._labels = labels
        self._clock = clock
        self._on_result = on_result
        self._observe = observe
        self._events: "queue.Queue[Any]" = queue.Queue()
        self._running: dict[str, _Running] = {}

    # ---- requests from other threads -----------------------------------------

    def cancel(self) -> None:
        self._events.put(_CANCEL)

    def drain(self) -> None:
        self._events.put(_DRAIN)

    # ---- the loop -------------------------------------------------------------

    def run(self) -> None:
        """Until the job finishes; raises JobFailedError or JobCancelledError."""
        instructions: Iterable[Instruction] = self._engine.start()
        while True:
            for instruction in instructions:
                if isinstance(instruction, RunBundle):
                    self._dispatch(instruction.bundle)
                elif isinstance(instruction, SplitBundle):
                    self._split(instruction)
                elif isinstance(instruction, JobFinished):
                    return
                elif isinstance(instruction, JobFailed):
                    raise JobFailedError(instruction.error) from instruction.cause
            instructions = self._engine.handle(self._next_event())
            if self._observe is not None:
                self._observe(self._engine)

    def _next_event(self) -> Event:
        wake = self._engine.next_wakeup()
        timeout = None if wake is None else max(0.0, wake - self._clock())
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            return Tick()
        if item is _CANCEL:
            raise JobCancelledError("the job was cancelled")
        if item is _DRAIN:
            return Drain()
        if isinstance(item, _Done):
            return self._outcome(item)
        return item   # an event already: a split's answer, a runner-side outcome

    # ---- carrying out instructions ----------------------------------------------

    def _dispatch(self, bundle: Bundle) -> None:
        stage = self._runner_stages.get(bundle.stage)
        if stage is not None:
            self._events.put(self._run_here(stage, bundle))
            return
        running = _Running(bundle, self._bundles.plan(bundle))
        self._running[bundle.id] = running
        _LOG.debug("Dispatching %s of %s (attempt %d)", bundle.id,
                   self._label(bundle.stage), bundle.attempt)
        future = self._pools[self._pool_of_stage[bundle.stage]].submit(
            lambda worker: self._attempt(running, worker))
        future.add_done_callback(lambda f: self._no_worker(running, f))

    def _run_here(self, stage: RunnerStage, bundle: Bundle) -> Event:
        engine = self._engine
        when = StageTime(engine.input_watermark(bundle.stage),
                         engine.watermark(bundle.stage), engine.now())
        try:
            return stage.run(bundle, when)
        except Exception as exc:   # user windowing/trigger code, or a bad coder
            return BundleFailed(bundle.id, "%s failed in bundle %s: %s: %s" % (
                self._label(bundle.stage), bundle.id, type(exc).__name__, exc),
                retriable=False, cause=exc)

    def _attempt(self, running: _Running, worker: Any) -> None:
        """On a pool thread, with the worker the pool chose; never raises:
        every attempt ends as one ``_Done`` in the queue."""
        try:
            attempt = self._bundles.attempt(running.plan, worker)
            running.started(attempt)
            done = _Done(running, result=attempt.run())
        except BaseException as exc:   # classified on the driver thread
            done = _Done(running, error=exc, lost=worker_lost(worker, exc))
        finally:
            running.finish()
        self._events.put(done)

    def _no_worker(self, running: _Running, future: Any) -> None:
        """The pool could not even give the bundle a worker (``_attempt``
        itself never raises)."""
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            self._events.put(_Done(running, error=error))

    def _split(self, instruction: SplitBundle) -> None:
        running = self._running.get(instruction.bundle_id)
        bundle_id = instruction.bundle_id
        if running is None:
            self._events.put(SplitRefused(bundle_id))
            return
        bundle = running.bundle

        def ask(attempt: Any) -> None:
            try:
                event = self._bundles.split(bundle, attempt,
                                            instruction.fraction_of_remainder)
            except Exception:
                _LOG.warning("Splitting bundle %s failed; it runs on unsplit", bundle_id,
                             exc_info=True)
                event = SplitRefused(bundle_id)
            self._events.put(event)

        if not running.split(ask):
            self._events.put(SplitRefused(bundle_id))

    # ---- outcomes ---------------------------------------------------------------

    def _outcome(self, done: _Done) -> Event:
        bundle = done.running.bundle
        self._running.pop(bundle.id, None)
        if done.error is None:
            try:
                event = self._bundles.succeeded(bundle, done.running.plan, done.result)
            except Exception as exc:   # a coder that cannot read the output
                return BundleFailed(bundle.id, "reading the output of %s failed: %s: %s"
                                    % (self._where(bundle), type(exc).__name__, exc),
                                    retriable=False, cause=exc)
            if self._on_result is not None:
                self._on_result(bundle, done.running.plan, done.result)
            return event
        if done.lost:
            return BundleFailed(bundle.id, "%s (%s)" % (done.error, self._where(bundle)),
                                retriable=True, cause=done.error)
        # The worker's error first: it names the user's exception and step.
        return BundleFailed(bundle.id, "%s\n[GpuRunner: failed in %s]" % (
            str(done.error).rstrip(), self._where(bundle)), retriable=False,
            cause=done.error)

    def _label(self, stage: str) -> str:
        return self._labels.get(stage, stage)

    def _where(self, bundle: Bundle) -> str:
        return "stage %s, bundle %s, attempt %d" % (
            self._label(bundle.stage), bundle.id, bundle.attempt)


def worker_lost(worker: Any, exc: BaseException) -> bool:
    """Whether ``exc`` came from the worker dying (the bundle may run again)."""
    if isinstance(exc, WorkerLostError) or getattr(worker, "lost", None):
        return True
    if isinstance(exc, BundleError):
        return False   # the worker answered: it reported the bundle's failure
    process = getattr(worker, "process", None)
    if process is None:
        return False
    # The data channel may break a moment before the watcher sees the exit.
    wait = getattr(process, "wait", None)
    if wait is not None:
        wait(1.0)
    return not process.is_alive()


__all__ = ["BundleRunner", "Driver", "Pool", "RunnerStage", "worker_lost"]
