"""A pool of workers for one (environment, requirements) key.

Each pool thread owns at most one worker, started lazily and replaced when it
dies, so a pool of size N runs at most N bundles at once on N workers. The
pool is where devices are attached: its factory leases them per worker.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, TypeVar

from apache_beam.runners.portability.fn_api_runner import worker_handlers as beam_wh

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
    def start(self, key: PoolKey) -> beam_wh.WorkerHandler:
        """Start one worker (leasing its devices); raise if it cannot."""

    def stop(self, handler: beam_wh.WorkerHandler) -> None:
        """Stop it and release what it held."""


def is_lost(handler: beam_wh.WorkerHandler) -> bool:
    return bool(getattr(handler, "lost", None))


class WorkerPool:
    def __init__(self, key: PoolKey, size: int, factory: WorkerFactory) -> None:
        if size < 1:
            raise ValueError("WorkerPool %s: size must be >= 1, got %d"
                             % (key.describe(), size))
        self.key = key
        self.size = size
        self._factory = factory
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix="pool-%s" % key.environment_id)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._workers: list[beam_wh.WorkerHandler] = []
        self._closed = False
        self._prestart_wait = 120.0
        self._prestart_barrier: Optional[threading.Barrier] = None

    def submit(self, fn: Callable[[beam_wh.WorkerHandler], T]) -> "concurrent.futures.Future[T]":
        """Run ``fn(worker)`` on a pool thread with that thread's worker."""
        return self._executor.submit(self._run, fn)

    def _run(self, fn: Callable[[beam_wh.WorkerHandler], T]) -> T:
        worker: Optional[beam_wh.WorkerHandler] = getattr(self._local, "worker", None)
        if worker is not None and is_lost(worker):
            self._discard(worker)
            worker = None
        if worker is None:
            if self._closed:
                raise RuntimeError("WorkerPool %s is closed" % self.key.describe())
            try:
                worker = self._factory.start(self.key)
            except BaseException:
                barrier = self._prestart_barrier
                if barrier is not None:
                    barrier.abort()   # release the other prestarting threads now
                raise
            with self._lock:
                closed = self._closed
                if not closed:
                    self._workers.append(worker)
            if closed:   # close() ran while this worker was starting
                self._factory.stop(worker)
                raise RuntimeError("WorkerPool %s is closed" % self.key.describe())
            self._local.worker = worker
        return fn(worker)

    def prestart(self, count: Optional[int] = None) -> list["concurrent.futures.Future[None]"]:
        """Start ``count`` (default: all) threads' workers now, concurrently,
        instead of on the first bundle (which would wait for process start,
        imports, model load).

        Returns the futures; a failed start is raised by ``result()`` and the
        thread tries again on its next bundle.
        """
        count = self.size if count is None else max(1, min(count, self.size))
        barrier = self._prestart_barrier = threading.Barrier(count)

        def start(_: beam_wh.WorkerHandler) -> None:
            # Hold each thread until all have a worker, so that every slot
            # (not one thread many times) gets one.
            try:
                barrier.wait(timeout=self._prestart_wait)
            except threading.BrokenBarrierError:
                pass

        futures = [self.submit(start) for _ in range(count)]
        for future in futures:
            future.add_done_callback(self._log_prestart_failure)
        return futures

    def _log_prestart_failure(self, future: "concurrent.futures.Future[None]") -> None:
        if self._closed:
            return   # the job ended first (a tiny job): nothing was lost
        if not future.cancelled() and future.exception() is not None:
            _LOG.warning("Pool %s: starting a worker ahead of time failed (it is retried "
                         "with the first bundle): %s", self.key.describe(), future.exception())

    def _discard(self, worker: beam_wh.WorkerHandler) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
        self._local.worker = None
        try:
            self._factory.stop(worker)
        except Exception:
            _LOG.warning("Stopping lost worker %s failed", worker.worker_id, exc_info=True)

    def workers(self) -> list[beam_wh.WorkerHandler]:
        with self._lock:
            return list(self._workers)

    def close(self) -> None:
        """Stop all workers (killing running bundles), then the threads."""
        with self._lock:
            self._closed = True
        abort_starts = getattr(self._factory, "abort_starts", None)
        if abort_starts is not None:
            abort_starts()   # do not wait for workers still connecting
        for worker in self.workers():
            try:
                self._factory.stop(worker)
            except Exception:
                _LOG.warning("Stopping worker %s failed", worker.worker_id, exc_info=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._workers.clear()
