"""A job's lifecycle: a pure state machine (requests in, actions out).

One implementation for both places that run jobs: GpuRunner's own job
(``execution.job``) and the job server's job (``jobservice.job``), which wraps
an executor's result. States are Beam's ``PipelineState`` names (the job server
maps them to the Job API's ``JobState`` numbers)::

    STOPPED -> STARTING -> RUNNING -> DONE | FAILED
                        -> CANCELLING -> CANCELLED (or DONE / FAILED if it ended first)
                        -> DRAINING -> DRAINED (or FAILED, or CANCELLING on a cancel)

A request is answered with the actions the caller must carry out on the
execution (``CANCEL``, ``DRAIN``): a request that arrives before the execution
exists (``STARTING``) is remembered and its action is returned by
``execution_started``. Requests that are not allowed raise
``LifecycleError`` naming the job, the request and the state. No threads, no
locks: callers serialise access (both callers hold a lock or a condition).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

STOPPED = "STOPPED"
STARTING = "STARTING"
RUNNING = "RUNNING"
CANCELLING = "CANCELLING"
CANCELLED = "CANCELLED"
DRAINING = "DRAINING"
DRAINED = "DRAINED"
DONE = "DONE"
FAILED = "FAILED"
UPDATED = "UPDATED"

TERMINAL = frozenset([CANCELLED, DRAINED, DONE, FAILED, UPDATED])


class Action(enum.Enum):
    """What the caller must do to the running execution."""

    CANCEL = "cancel"
    DRAIN = "drain"


class LifecycleError(RuntimeError):
    """A request the job's state does not allow (args only, so it pickles)."""

    def __init__(self, job: str, request: str, state: str, why: str) -> None:
        super().__init__(job, request, state, why)
        self.job = job
        self.request = request
        self.state = state
        self.why = why

    def __str__(self) -> str:
        return "cannot %s job %s (state %s): %s" % (self.request, self.job, self.state,
                                                    self.why)


def is_terminal(state: str) -> bool:
    return state in TERMINAL


@dataclass
class Lifecycle:
    """One job's state and the requests it has seen; see the module docstring."""

    job: str = "job"
    state: str = STOPPED
    cancel_requested: bool = False
    drain_requested: bool = False
    #: the execution exists (requests act on it at once, not when it starts)
    execution: bool = False
    history: list[str] = field(default_factory=lambda: [STOPPED])

    # ---- requests -----------------------------------------------------------

    def start(self) -> None:
        """The job was submitted: STOPPED -> STARTING."""
        if self.state != STOPPED:
            raise LifecycleError(self.job, "start", self.state,
                                 "only a prepared, never-run job (STOPPED) can start")
        self._go(STARTING)

    def execution_started(self) -> list[Action]:
        """The execution exists and runs: RUNNING, or what was asked meanwhile."""
        self.execution = True
        if is_terminal(self.state):
            return []
        if self.cancel_requested:
            return [Action.CANCEL]
        if self.drain_requested:
            self._go(DRAINING)
            return [Action.DRAIN]
        self._go(RUNNING)
        return []

    def cancel(self) -> list[Action]:
        """Stop at once, dropping buffered data. A never-run job ends CANCELLED."""
        if is_terminal(self.state):
            raise LifecycleError(self.job, "cancel", self.state, "the job already ended")
        if self.state == STOPPED:
            self._go(CANCELLED)
            return []
        first = not self.cancel_requested
        self.cancel_requested = True
        self._go(CANCELLING)
        return [Action.CANCEL] if first and self.execution else []

    def drain(self) -> list[Action]:
        """Stop reading, finish what was read, end DRAINED (Dataflow's drain)."""
        if is_terminal(self.state):
            raise LifecycleError(
                self.job, "drain", self.state,
                "the job already ended; a drain stops a running job's sources and lets "
                "it finish what they read, so there is nothing left to drain")
        if self.state == STOPPED:
            raise LifecycleError(self.job, "drain", self.state,
                                 "it was prepared but never run: run it first, or cancel "
                                 "it to discard it")
        if self.cancel_requested:
            raise LifecycleError(self.job, "drain", self.state,
                                 "it is being cancelled, which drops the data it holds; "
                                 "a cancel cannot become a drain")
        if self.drain_requested:
            return []
        self.drain_requested = True
        if not self.execution:
            return []   # DRAINING once it has started
        self._go(DRAINING)
        return [Action.DRAIN]

    # ---- the execution's end ---------------------------------------------------

    def finished(self, outcome: str) -> str:
        """The execution ended DONE, FAILED or CANCELLED; returns the final state.

        Failing while being cancelled is being cancelled; finishing after a
        drain (and no cancel) is DRAINED; an execution that finished before a
        cancel took effect keeps its own end.
        """
        if outcome not in (DONE, FAILED, CANCELLED):
            raise ValueError("Lifecycle.finished: outcome must be DONE, FAILED or "
                             "CANCELLED, got %r" % (outcome,))
        if is_terminal(self.state):
            return self.state
        final = outcome
        if outcome == FAILED and self.cancel_requested:
            final = CANCELLED
        elif outcome == DONE and self.drain_requested and not self.cancel_requested:
            final = DRAINED
        self._go(final)
        return final

    def start_failed(self) -> str:
        """The execution could not even start."""
        return self.finished(FAILED)

    def _go(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.history.append(state)


__all__ = ["Action", "CANCELLED", "CANCELLING", "DONE", "DRAINED", "DRAINING", "FAILED",
           "Lifecycle", "LifecycleError", "RUNNING", "STARTING", "STOPPED", "TERMINAL",
           "UPDATED", "is_terminal"]
