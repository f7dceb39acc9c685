"""WarmProcesses: idle workers kept for the next job, with fake processes and clock."""
from __future__ import annotations

from beam_gpu_runner.placement.warm import WarmProcesses


class TestingProcess:
    __test__ = False
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.alive = True
        self.retired = 0

    def is_alive(self) -> bool:
        return self.alive

    def retire(self) -> None:
        self.retired += 1
        self.alive = False


class TestingClock:
    __test__ = False
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_parked_process_is_taken_by_its_key_only_once():
    warm = WarmProcesses()
    a = TestingProcess("a")
    assert warm.park("key-1", a, keep_alive_s=30)
    assert warm.take("key-2") is None
    assert warm.take("key-1") is a
    assert warm.take("key-1") is None
    assert a.retired == 0
    warm.close()


def test_the_newest_process_of_a_key_is_taken_first():
    warm = WarmProcesses()
    old, new = TestingProcess("old"), TestingProcess("new")
    warm.park("k", old, 30)
    warm.park("k", new, 30)
    assert warm.take("k") is new
    assert warm.take("k") is old
    warm.close()


def test_a_process_that_died_while_parked_is_reaped_not_handed_out():
    warm = WarmProcesses()
    live, dead = TestingProcess("live"), TestingProcess("dead")
    warm.park("k", live, 30)
    warm.park("k", dead, 30)
    dead.alive = False
    assert warm.take("k") is live
    assert dead.retired == 1
    assert len(warm) == 0
    warm.close()


def test_processes_beyond_the_limit_or_without_keep_alive_are_not_kept():
    warm = WarmProcesses(limit=1)
    assert not warm.park("k", TestingProcess("no-keep-alive"), keep_alive_s=0)
    assert warm.park("k", TestingProcess("first"), 30)
    assert not warm.park("k", TestingProcess("second"), 30)
    assert len(warm) == 1
    warm.close()


def test_processes_idle_past_their_keep_alive_are_ended():
    clock = TestingClock()
    warm = WarmProcesses(clock=clock)
    short, long = TestingProcess("short"), TestingProcess("long")
    warm.park("k", short, keep_alive_s=5)
    warm.park("k", long, keep_alive_s=60)
    clock.now += 10
    warm.expire()
    assert short.retired == 1 and long.retired == 0
    assert warm.take("k") is long
    warm.close()


def test_retire_all_ends_every_parked_process_and_parking_goes_on():
    warm = WarmProcesses()
    processes = [TestingProcess("p%d" % i) for i in range(3)]
    for i, process in enumerate(processes):
        warm.park("k%d" % i, process, 30)
    warm.retire_all()
    assert [p.retired for p in processes] == [1, 1, 1]
    assert warm.park("k", TestingProcess("later"), 30)
    warm.close()


def test_after_close_nothing_is_parked():
    warm = WarmProcesses()
    parked = TestingProcess("parked")
    warm.park("k", parked, 30)
    warm.close()
    assert parked.retired == 1
    assert not warm.park("k", TestingProcess("late"), 30)
