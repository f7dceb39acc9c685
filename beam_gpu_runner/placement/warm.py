"""Idle worker processes kept for the next job of this runner process.

A job's worker ends when the job does; starting the next job's worker costs
an interpreter and ``import apache_beam`` (~0.55 s on a 2-core host), which
dominates small jobs and suites of small ``TestPipeline`` tests. As Flink's
session cluster keeps its idle TaskManagers for
``resourcemanager.taskmanager-timeout`` (30 s), a local worker whose job ended
cleanly is parked here for ``--worker_keep_alive`` seconds, and a later job
whose worker would be started with the same environment takes it instead:
the process runs Beam's harness again for that job (``placement/harness.py``),
with that job's options, control address and worker id. Beam's harness, its
caches and its log handler are new for each job; the interpreter, its imported
modules and their globals are not (as in one DirectRunner process).

Only workers without devices are parked: an idle JAX process keeps the GPU
memory it reserved, which the next lease holder of that device needs.

``WarmProcesses`` is the reserve: keyed by the environment the worker was
started with (everything but the per-job variables), newest first, at most
``limit`` processes, each ended when its time is up or at interpreter exit.
It knows processes only as ``Parkable``: tested with fakes.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

_LOG = logging.getLogger(__name__)

#: Parked processes at most; beyond it a finished job's workers end as before.
DEFAULT_LIMIT = 8


class Parkable(Protocol):
    worker_id: str

    def is_alive(self) -> bool: ...

    def retire(self) -> None:
        """End the idle process (it exits by itself; killed if it does not)."""


@dataclass
class _Parked:
    key: str
    process: Parkable
    until: float


class WarmProcesses:
    def __init__(self, limit: int = DEFAULT_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._parked: list[_Parked] = []
        self._changed = threading.Condition()
        self._reaper: Optional[threading.Thread] = None
        self._closed = False

    def park(self, key: str, process: Parkable, keep_alive_s: float) -> bool:
        """Keep ``process`` for ``keep_alive_s``; False when it was not kept
        (the reserve is full or closed): the caller ends it."""
        with self._changed:
            if self._closed or keep_alive_s <= 0 or len(self._parked) >= self._limit:
                return False
            self._parked.append(_Parked(key, process, self._clock() + keep_alive_s))
            self._start_reaper()
            self._changed.notify_all()
        _LOG.debug("Worker %s parked for %.0fs", process.worker_id, keep_alive_s)
        return True

    def take(self, key: str) -> Optional[Parkable]:
        """The most recently parked live process started with ``key``, or None."""
        dead: list[Parkable] = []
        found: Optional[Parkable] = None
        with self._changed:
            for parked in reversed(self._parked):
                if parked.key != key:
                    continue
                self._parked.remove(parked)
                if parked.process.is_alive():
                    found = parked.process
                    break
                dead.append(parked.process)
        for process in dead:
            process.retire()   # reaps it and closes its log
        return found

    def __len__(self) -> int:
        with self._changed:
            return len(self._parked)

    def expire(self) -> None:
        """End the processes whose time is up (the reaper calls this)."""
        now = self._clock()
        with self._changed:
            due = [p for p in self._parked if p.until <= now]
            self._parked = [p for p in self._parked if p.until > now]
        for parked in due:
            _LOG.debug("Worker %s idle for its keep-alive: ending it",
                       parked.process.worker_id)
            parked.process.retire()

    def close(self) -> None:
        """End every parked process; nothing is parked from now on."""
        with self._changed:
            self._closed = True
        self.retire_all()

    def retire_all(self) -> None:
        """End every parked process now (later jobs start new ones)."""
        with self._changed:
            parked, self._parked = self._parked, []
            self._changed.notify_all()
        enders = [threading.Thread(target=p.process.retire, daemon=True) for p in parked]
        for ender in enders:
            ender.start()
        for ender in enders:
            ender.join()

    def _start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="warm-workers-reaper",
                                            daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                wait = (min(p.until for p in self._parked) - self._clock()
                        if self._parked else None)
                if wait is None or wait > 0:
                    self._changed.wait(wait)
                    continue
            self.expire()


#: The reserve of this process; local placements park their workers here.
WARM = WarmProcesses()
atexit.register(WARM.close)
