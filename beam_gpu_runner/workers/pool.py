"""A pool of workers for one (environment, requirements) key.

The pool has ``size`` worker slots and ``size * bundles_per_worker`` threads;
at most ``bundles_per_worker`` bundles run at once on one worker (Beam's SDK
harness runs concurrent bundles on its own threads). A bundle goes to an idle
started worker first, then starts another worker, then shares the least busy
one. A slot's worker is started lazily (or ahead of time by ``prestart``) and
replaced when it dies. ``bundles_per_worker`` comes from
the stage's ``max_active_bundles_per_worker`` resource hint, else the
runner's default. The pool is where devices are attached: its factory leases
them per worker.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, TypeVar

from beam_gpu_runner.bridge.workers import Worker
from beam_gpu_runner.resources.requirements import StageRequirements

_LOG = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PoolKey:
    environment_id: str
    requirements: StageRequirements

    def describe(self) -> str:
        return "%s[%s]" % (self.environment_id, self.requirements.describe())


class WorkerFactory(Protocol):
    def start(self, key: PoolKey) -> Worker:
        """Start one worker (leasing its devices); raise if it cannot."""

    def stop(self, worker: Worker) -> None:
        """Stop it and release what it held."""


def is_lost(worker: Worker) -> bool:
    return bool(worker.lost)


class _Slot:
    """One worker place; its lock serialises starting and replacing it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.lock = threading.Lock()
        self.worker: Optional[Worker] = None
        #: bundles running on (or waiting for) this slot's worker
        self.active = 0


class WorkerPool:
    def __init__(self, key: PoolKey, size: int, factory: WorkerFactory,
                 bundles_per_worker: Optional[int] = None) -> None:
        if size < 1:
            raise ValueError("WorkerPool %s: size must be >= 1, got %d"
                             % (key.describe(), size))
        if bundles_per_worker is None:
            bundles_per_worker = key.requirements.max_active_bundles_per_worker or 1
        if bundles_per_worker < 1:
            raise ValueError("WorkerPool %s: bundles_per_worker must be >= 1, got %d"
                             % (key.describe(), bundles_per_worker))
        self.key = key
        self.size = size
        self.bundles_per_worker = bundles_per_worker
        self._factory = factory
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=size * bundles_per_worker,
            thread_name_prefix="pool-%s" % key.environment_id)
        self._slots = [_Slot(i) for i in range(size)]
        self._lock = threading.Lock()
        self._closed = False

    @property
    def threads(self) -> int:
        """How many bundles the pool runs at once."""
        return self.size * self.bundles_per_worker

    def submit(self, fn: Callable[[Worker], T]) -> "concurrent.futures.Future[T]":
        """Run ``fn(worker)`` on a pool thread with its slot's worker."""
        return self._executor.submit(self._run, fn)

    def _run(self, fn: Callable[[Worker], T]) -> T:
        slot = self._take_slot()
        try:
            return fn(self._worker_of(slot))
        finally:
            with self._lock:
                slot.active -= 1

    def _take_slot(self) -> _Slot:
        """An idle started worker, else a slot with no worker yet (it starts
        one: more parallelism), else the least busy. Some slot always has
        room: there are only ``size * bundles_per_worker`` threads."""
        with self._lock:
            free = [s for s in self._slots if s.active < self.bundles_per_worker]
            started = [s for s in free if s.worker is not None and not is_lost(s.worker)]
            idle = [s for s in started if s.active == 0]
            empty = [s for s in free if (s.worker is None or is_lost(s.worker))
                     and s.active == 0]
            slot = (idle[0] if idle else empty[0] if empty
                    else min(free, key=lambda s: s.active))
            slot.active += 1
            return slot

    def _worker_of(self, slot: _Slot) -> Worker:
        with slot.lock:
            worker = slot.worker
            if worker is not None and is_lost(worker):
                self._discard(slot, worker)
                worker = None
            if worker is None:
                if self._closed:
                    raise RuntimeError("WorkerPool %s is closed" % self.key.describe())
                worker = self._factory.start(self.key)
                with self._lock:
                    closed = self._closed
                    if not closed:
                        slot.worker = worker
                if closed:   # close() ran while this worker was starting
                    self._factory.stop(worker)
                    raise RuntimeError("WorkerPool %s is closed" % self.key.describe())
            return worker

    def prestart(self, count: Optional[int] = None) -> list["concurrent.futures.Future[None]"]:
        """Start the workers of ``count`` (default: all) slots now, concurrently,
        instead of on the first bundle (which would wait for process start,
        imports, model load).

        Returns the futures; a failed start is raised by ``result()`` and the
        slot tries again with its next bundle.
        """
        count = self.size if count is None else max(1, min(count, self.size))
        futures = [self._executor.submit(self._prestart_slot, self._slots[i])
                   for i in range(count)]
        for future in futures:
            future.add_done_callback(self._log_prestart_failure)
        return futures

    def _prestart_slot(self, slot: _Slot) -> None:
        with self._lock:
            slot.active += 1   # a bundle arriving meanwhile waits for this start
        try:
            self._worker_of(slot)
        finally:
            with self._lock:
                slot.active -= 1

    def _log_prestart_failure(self, future: "concurrent.futures.Future[None]") -> None:
        if self._closed:
            return   # the job ended first (a tiny job): nothing was lost
        if not future.cancelled() and future.exception() is not None:
            _LOG.warning("Pool %s: starting a worker ahead of time failed (it is retried "
                         "with the first bundle): %s", self.key.describe(), future.exception())

    def _discard(self, slot: _Slot, worker: Worker) -> None:
        with self._lock:
            if slot.worker is worker:
                slot.worker = None
        self._stop(worker)

    def _stop(self, worker: Worker) -> None:
        try:
            self._factory.stop(worker)
        except Exception:
            _LOG.warning("Stopping worker %s failed", worker.worker_id, exc_info=True)

    def workers(self) -> list[Worker]:
        with self._lock:
            return [s.worker for s in self._slots if s.worker is not None]

    def close(self) -> None:
        """Stop all workers (killing running bundles), then the threads."""
        with self._lock:
            self._closed = True
        abort_starts = getattr(self._factory, "abort_starts", None)
        if abort_starts is not None:
            abort_starts()   # do not wait for workers still connecting
        # All at once: an idle harness takes ~0.2 s to exit after its goodbye.
        stoppers = [threading.Thread(target=self._stop, args=(worker,), daemon=True,
                                     name="stop-%s" % worker.worker_id)
                    for worker in self.workers()]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for slot in self._slots:
                slot.worker = None
