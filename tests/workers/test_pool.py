"""Worker pool lifecycle with a fake factory: no processes."""
from __future__ import annotations

import threading
from dataclasses import replace
import time

import pytest

from beam_gpu_runner.resources.requirements import NO_REQUIREMENTS
from beam_gpu_runner.workers.pool import PoolKey, WorkerPool


class TestingWorker:
    __test__ = False

    def __init__(self, n: int) -> None:
        self.worker_id = "fake-%d" % n
        self.lost = None
        self.closed = False


class TestingWorkerFactory:
    __test__ = False

    def __init__(self, fail_first: int = 0) -> None:
        self.started: list[TestingWorker] = []
        self.stopped: list[TestingWorker] = []
        self._fail = fail_first
        self._lock = threading.Lock()

    def start(self, key):
        with self._lock:
            if self._fail:
                self._fail -= 1
                raise RuntimeError("cannot start worker")
            worker = TestingWorker(len(self.started))
            self.started.append(worker)
            return worker

    def stop(self, handler):
        handler.closed = True
        self.stopped.append(handler)


KEY = PoolKey("env", NO_REQUIREMENTS)


def test_workers_start_lazily_and_are_reused_per_thread():
    factory = TestingWorkerFactory()
    pool = WorkerPool(KEY, 2, factory)
    assert factory.started == []
    ids = {pool.submit(lambda w: w.worker_id).result() for _ in range(10)}
    assert 1 <= len(factory.started) <= 2 and ids <= {w.worker_id for w in factory.started}
    pool.close()
    assert sorted(w.worker_id for w in factory.stopped) == sorted(
        w.worker_id for w in factory.started)


def _peak_concurrency(pool: WorkerPool, tasks: int) -> tuple[int, set]:
    running: list[str] = []
    peak: list[int] = []
    lock = threading.Lock()

    def work(worker):
        with lock:
            running.append(worker.worker_id)
            peak.append(len(running))
        time.sleep(0.05)
        with lock:
            running.remove(worker.worker_id)
        return worker.worker_id

    used = {f.result() for f in [pool.submit(work) for _ in range(tasks)]}
    return max(peak), used


def test_concurrency_is_bounded_by_the_pool_size():
    pool = WorkerPool(KEY, 2, TestingWorkerFactory())
    peak, used = _peak_concurrency(pool, 8)
    pool.close()
    assert peak == 2 and len(used) == 2


def test_lost_worker_is_replaced_and_stopped():
    factory = TestingWorkerFactory()
    pool = WorkerPool(KEY, 1, factory)
    first = pool.submit(lambda w: w).result()
    first.lost = "worker fake-0 died: killed by signal SIGKILL"
    second = pool.submit(lambda w: w).result()
    assert second is not first and first in factory.stopped
    pool.close()


def test_start_failure_reaches_the_caller_and_the_next_call_retries():
    pool = WorkerPool(KEY, 1, TestingWorkerFactory(fail_first=1))
    with pytest.raises(RuntimeError, match="cannot start worker"):
        pool.submit(lambda w: w).result()
    assert pool.submit(lambda w: w.worker_id).result() == "fake-0"
    pool.close()


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="size must be >= 1"):
        WorkerPool(KEY, 0, TestingWorkerFactory())


def test_prestart_gives_every_slot_its_worker_before_any_bundle():
    factory = TestingWorkerFactory()
    pool = WorkerPool(KEY, 3, factory)
    for future in pool.prestart():
        future.result()
    assert len(factory.started) == 3
    # Later bundles reuse those workers.
    ids = {pool.submit(lambda w: w.worker_id).result() for _ in range(6)}
    assert ids <= {w.worker_id for w in factory.started} and len(factory.started) == 3
    pool.close()


def test_prestart_failure_is_reported_at_once_and_retried_later():
    factory = TestingWorkerFactory(fail_first=1)
    pool = WorkerPool(KEY, 2, factory)
    futures = pool.prestart()
    errors = []
    for future in futures:   # one fails; the other is not left waiting for it
        try:
            future.result(timeout=10)
        except RuntimeError as exc:
            errors.append(str(exc))
    assert errors == ["cannot start worker"]
    assert pool.submit(lambda w: w.worker_id).result().startswith("fake-")
    pool.close()


def test_bundles_per_worker_run_concurrently_on_one_worker():
    factory = TestingWorkerFactory()
    pool = WorkerPool(KEY, 1, factory, bundles_per_worker=3)
    peak, used = _peak_concurrency(pool, 9)
    pool.close()
    assert peak == 3 and used == {"fake-0"} and len(factory.started) == 1


def test_two_workers_with_two_bundles_each():
    factory = TestingWorkerFactory()
    pool = WorkerPool(KEY, 2, factory, bundles_per_worker=2)
    assert pool.threads == 4
    peak, used = _peak_concurrency(pool, 16)
    pool.close()
    assert peak == 4 and len(used) == 2 and len(factory.started) == 2


def test_the_stage_hint_sets_bundles_per_worker_when_not_given():
    key = PoolKey("env", replace(NO_REQUIREMENTS, max_active_bundles_per_worker=3))
    pool = WorkerPool(key, 1, TestingWorkerFactory())
    assert pool.bundles_per_worker == 3
    pool.close()
    with pytest.raises(ValueError, match="bundles_per_worker must be >= 1"):
        WorkerPool(KEY, 1, TestingWorkerFactory(), bundles_per_worker=0)


def test_a_lost_shared_worker_is_replaced_once():
    factory = TestingWorkerFactory()
    pool = WorkerPool(KEY, 1, factory, bundles_per_worker=2)
    first = pool.submit(lambda w: w).result()
    first.lost = "worker fake-0 died"
    later = {pool.submit(lambda w: w.worker_id).result() for _ in range(6)}
    pool.close()
    assert later == {"fake-1"} and factory.stopped.count(first) == 1


def test_an_idle_started_worker_is_used_before_another_starts():
    factory = TestingWorkerFactory()
    pool = WorkerPool(KEY, 3, factory, bundles_per_worker=2)
    for future in pool.prestart(1):
        future.result()
    ids = [pool.submit(lambda w: w.worker_id).result() for _ in range(5)]
    pool.close()
    # One bundle at a time: the prestarted worker takes them all.
    assert ids == ["fake-0"] * 5 and len(factory.started) == 1


def test_close_stops_the_workers_at_the_same_time():
    # An idle harness takes ~0.2 s to exit after its goodbye; stopped one
    # after the other, a pool's workers made every job end that much later.
    arrived = threading.Barrier(2, timeout=5)

    class WaitingFactory(TestingWorkerFactory):
        def stop(self, handler):
            arrived.wait()   # breaks (and the stop fails) if stops are serial
            super().stop(handler)

    factory = WaitingFactory()
    pool = WorkerPool(KEY, 2, factory)
    pool.prestart(2)
    while len(pool.workers()) < 2:
        time.sleep(0.01)
    pool.close()
    assert not arrived.broken
    assert sorted(w.worker_id for w in factory.stopped) == ["fake-0", "fake-1"]
