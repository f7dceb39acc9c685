"""One job of the job server: its state history and message log.

The job's state decisions are the shared lifecycle state machine's
(``beam_gpu_runner.lifecycle``, also used by GpuRunner's own jobs): this
module records every state it goes through as a Job API ``JobState`` with a
timestamp, keeps the job's messages, and carries out what the lifecycle says
on the executor's result (cancel it, drain it)::

    STOPPED -> STARTING -> RUNNING -> DONE | FAILED | CANCELLING -> CANCELLED
                                   -> DRAINING -> DRAINED

Everything a client streams (``GetStateStream``, ``GetMessageStream``) is read
from this object's history, so a stream opened late still sees every state
since ``STOPPED`` and the job's messages.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

from apache_beam.portability.api import beam_job_api_pb2, beam_runner_api_pb2
from apache_beam.utils.timestamp import Timestamp
from google.protobuf import struct_pb2

import beam_gpu_runner.lifecycle as lifecycle
from beam_gpu_runner.jobservice.executor import JobResult

_LOG = logging.getLogger(__name__)

JobState = beam_job_api_pb2.JobState
JobMessage = beam_job_api_pb2.JobMessage


# Beam PipelineState strings that a JobResult may report, mapped to JobState.
_PIPELINE_STATE_TO_JOB_STATE: dict[str, int] = {
    "STOPPED": JobState.STOPPED,
    "PENDING": JobState.STARTING,
    "STARTING": JobState.STARTING,
    "RUNNING": JobState.RUNNING,
    "DONE": JobState.DONE,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "CANCELLING": JobState.CANCELLING,
    "UPDATED": JobState.UPDATED,
    "DRAINING": JobState.DRAINING,
    "DRAINED": JobState.DRAINED,
}

# How many messages a job keeps; the oldest go first.
MAX_MESSAGES = 10_000

# How often a blocked stream re-checks whether its client is still there.
_STREAM_POLL_S = 0.5


def state_name(state: int) -> str:
    return str(JobState.Enum.Name(state))


def is_terminal(state: int) -> bool:
    return state in TERMINAL_STATES


def job_state(name: str) -> int:
    """The Job API's JobState number of a lifecycle state name."""
    return int(JobState.Enum.Value(name))


TERMINAL_STATES = frozenset(job_state(name) for name in lifecycle.TERMINAL)


def job_state_of(pipeline_state: object) -> int:
    """The JobState for a Beam ``PipelineState`` string (or a JobState int)."""
    if isinstance(pipeline_state, int):
        return pipeline_state
    return _PIPELINE_STATE_TO_JOB_STATE.get(str(pipeline_state), JobState.UNSPECIFIED)


class DrainUnsupportedError(RuntimeError):
    """The job's executor returned a result without ``drain()``."""

    def __init__(self, job_id: str, result_type: str) -> None:
        super().__init__(job_id, result_type)
        self.job_id = job_id
        self.result_type = result_type

    def __str__(self) -> str:
        return ("job %s cannot drain: its executor's result (%s) has no drain(); "
                "Cancel stops it instead" % (self.job_id, self.result_type))


class InvalidTransitionError(RuntimeError):
    """A job was asked to move to a state its current state does not allow."""

    def __init__(self, job_id: str, from_state: int, to_state: int) -> None:
        super().__init__(job_id, from_state, to_state)
        self.job_id = job_id
        self.from_state = from_state
        self.to_state = to_state

    def __str__(self) -> str:
        return "job %s: cannot go from %s to %s" % (
            self.job_id, state_name(self.from_state), state_name(self.to_state))


@dataclass(frozen=True)
class StateEvent:
    state: int
    timestamp: Timestamp

    def to_proto(self) -> beam_job_api_pb2.JobStateEvent:
        return beam_job_api_pb2.JobStateEvent(
            state=self.state,  # type: ignore[arg-type]
            timestamp=self.timestamp.to_proto())


# An entry of the message log: a job message or a state change.
LogEntry = Union[StateEvent, beam_job_api_pb2.JobMessage]


class Job:
    """One prepared job. Thread-safe."""

    def __init__(self,
                 job_id: str,
                 job_name: str,
                 pipeline: beam_runner_api_pb2.Pipeline,
                 pipeline_options: struct_pb2.Struct) -> None:
        self.job_id = job_id
        self.job_name = job_name
        self.pipeline = pipeline
        self.pipeline_options = pipeline_options
        self._cond = threading.Condition()
        self._states: list[StateEvent] = [StateEvent(JobState.STOPPED, Timestamp.now())]
        # Message log: messages and state changes, in order. _dropped counts
        # entries removed from the front so that stream positions stay valid.
        self._log: list[LogEntry] = [self._states[0]]
        self._dropped = 0
        self._next_message_id = 1
        self._result: Optional[JobResult] = None
        self._lifecycle = lifecycle.Lifecycle(job=job_id)
        self._thread: Optional[threading.Thread] = None

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> int:
        with self._cond:
            return self._states[-1].state

    def state_event(self) -> StateEvent:
        with self._cond:
            return self._states[-1]

    def state_history(self) -> list[StateEvent]:
        with self._cond:
            return list(self._states)

    @property
    def result(self) -> Optional[JobResult]:
        with self._cond:
            return self._result

    def _sync(self) -> None:
        """Record the lifecycle's new states (call with ``_cond`` held)."""
        for name in self._lifecycle.history[len(self._states):]:
            event = StateEvent(job_state(name), Timestamp.now())
            self._states.append(event)
            self._append_log(event)
            _LOG.info("Job %s is %s", self.job_id, name)
        self._cond.notify_all()

    def _refused(self, exc: lifecycle.LifecycleError, wanted: int
                 ) -> "InvalidTransitionError":
        return InvalidTransitionError(self.job_id, job_state(exc.state), wanted)

    # -- messages ------------------------------------------------------------

    def add_message(self, text: str,
                    importance: int = JobMessage.JOB_MESSAGE_BASIC) -> None:
        with self._cond:
            message = JobMessage(
                message_id=str(self._next_message_id),
                time=time.strftime("%Y-%m-%d %H:%M:%S"),
                importance=importance,  # type: ignore[arg-type]
                message_text=text)
            self._next_message_id += 1
            self._append_log(message)
            self._cond.notify_all()

    def _append_log(self, entry: LogEntry) -> None:
        self._log.append(entry)
        if len(self._log) > MAX_MESSAGES:
            del self._log[0]
            self._dropped += 1

    # -- streams -------------------------------------------------------------

    def state_stream(self, is_active: Callable[[], bool] = lambda: True
                     ) -> Iterator[StateEvent]:
        """Every state since STOPPED, then new ones; ends after a terminal one
        or when ``is_active()`` turns False (the client went away)."""
        position = 0
        while True:
            with self._cond:
                while position >= len(self._states):
                    if not is_active():
                        return
                    self._cond.wait(_STREAM_POLL_S)
                event = self._states[position]
            position += 1
            yield event
            if is_terminal(event.state):
                return

    def message_stream(self, is_active: Callable[[], bool] = lambda: True
                       ) -> Iterator[LogEntry]:
        """The job's messages and state changes, oldest kept first, then new
        ones; ends after a terminal state or when the client went away."""
        position = 0  # absolute index: _dropped + list index
        while True:
            with self._cond:
                while position >= self._dropped + len(self._log):
                    if not is_active():
                        return
                    self._cond.wait(_STREAM_POLL_S)
                position = max(position, self._dropped)
                entry = self._log[position - self._dropped]
            position += 1
            yield entry
            if isinstance(entry, StateEvent) and is_terminal(entry.state):
                return

    def wait_until_terminal(self, timeout: Optional[float] = None) -> bool:
        """True once the job is in a terminal state; False after ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(
                lambda: is_terminal(self._states[-1].state), timeout)

    # -- running -------------------------------------------------------------

    def start(self, launch: Callable[[], JobResult],
              on_end: Optional[Callable[[], None]] = None) -> None:
        """Go STARTING and run the job on a thread of its own.

        ``launch`` starts the job and returns its result promptly; the job's
        thread then waits for the result and records the final state, then
        calls ``on_end`` (e.g. to remove the job's staged files).
        """
        with self._cond:
            try:
                self._lifecycle.start()
            except lifecycle.LifecycleError as exc:
                raise self._refused(exc, JobState.STARTING) from None
            self._sync()
        self._thread = threading.Thread(
            target=self._drive_then, args=(launch, on_end), name="job-%s" % self.job_id,
            daemon=True)
        self._thread.start()

    def _drive_then(self, launch: Callable[[], JobResult],
                    on_end: Optional[Callable[[], None]]) -> None:
        try:
            self._drive(launch)
        finally:
            if on_end is not None:
                try:
                    on_end()
                except Exception:
                    _LOG.warning("Clean-up after job %s failed", self.job_id,
                                 exc_info=True)

    def _drive(self, launch: Callable[[], JobResult]) -> None:
        try:
            result = launch()
        except Exception:  # the executor refused or crashed
            with self._cond:
                cancelled = self._lifecycle.cancel_requested
            if cancelled:
                _LOG.info("Job %s was cancelled while starting; its start raised",
                          self.job_id, exc_info=True)
            else:
                self._fail_message("could not start job %s" % self.job_id)
            self._finish(lifecycle.FAILED)
            return
        with self._cond:
            self._result = result
            actions = self._lifecycle.execution_started()
            self._sync()
        self._act(result, actions)
        try:
            final = result.wait_until_finish()
            name = state_name(job_state_of(final if final is not None else result.state))
        except Exception:
            with self._cond:
                cancelled = self._lifecycle.cancel_requested
            if not cancelled:
                self._fail_message("job %s failed" % self.job_id)
            self._finish(lifecycle.FAILED)
            return
        if not lifecycle.is_terminal(name):
            # A result that returns before it ends is a broken executor.
            name = state_name(job_state_of(result.state))
            if not lifecycle.is_terminal(name):
                self._fail_message("job %s: executor result returned from "
                                   "wait_until_finish() in state %s" % (self.job_id, name),
                                   with_traceback=False)
                self._finish(lifecycle.FAILED)
                return
        if name == lifecycle.FAILED:
            self.add_message("job %s failed (the executor reported FAILED)"
                             % self.job_id, JobMessage.JOB_MESSAGE_ERROR)
        # An executor's DRAINED is the end of a drain: DONE after one.
        self._finish(lifecycle.DONE if name in (lifecycle.DRAINED, lifecycle.UPDATED)
                     else name)

    def _finish(self, outcome: str) -> None:
        with self._cond:
            self._lifecycle.finished(outcome)
            self._sync()

    def _fail_message(self, text: str, with_traceback: bool = True) -> None:
        _LOG.error("%s", text, exc_info=with_traceback)
        if with_traceback:
            text = "%s:\n%s" % (text, traceback.format_exc())
        self.add_message(text, JobMessage.JOB_MESSAGE_ERROR)

    def _act(self, result: Optional[JobResult], actions: list[lifecycle.Action]) -> None:
        if result is None:
            return
        if lifecycle.Action.CANCEL in actions:
            self._cancel_result(result)
        if lifecycle.Action.DRAIN in actions:
            self._drain_result(result)

    def cancel(self) -> int:
        """Ask the job to stop; return the state after asking.

        Raises ``InvalidTransitionError`` when the job already ended.
        """
        with self._cond:
            try:
                actions = self._lifecycle.cancel()
            except lifecycle.LifecycleError as exc:
                raise self._refused(exc, JobState.CANCELLED) from None
            result = self._result
            self._sync()
        self._act(result, actions)
        return self.state

    def drain(self) -> int:
        """Ask the job to drain: stop reading, finish what was read, end
        DRAINED. Returns the state after asking (DRAINING; STARTING when the
        executor has not returned the job's result yet: it drains then).

        Raises ``InvalidTransitionError`` when the job cannot drain (it ended,
        was never run, or is being cancelled) and ``DrainUnsupportedError``
        when its executor's result has no ``drain()``.
        """
        with self._cond:
            result = self._result
            if (result is not None and not lifecycle.is_terminal(self._lifecycle.state)
                    and not callable(getattr(result, "drain", None))):
                raise DrainUnsupportedError(self.job_id, type(result).__name__)
            try:
                actions = self._lifecycle.drain()
            except lifecycle.LifecycleError as exc:
                raise self._refused(exc, JobState.DRAINING) from None
            self._sync()
        self._act(result, actions)
        return self.state

    def _drain_result(self, result: JobResult) -> None:
        drain = getattr(result, "drain", None)
        if not callable(drain):
            self.add_message(str(DrainUnsupportedError(self.job_id, type(result).__name__)),
                             JobMessage.JOB_MESSAGE_WARNING)
            return
        try:
            drain()
        except Exception as exc:   # e.g. it ended meanwhile: its state says how
            _LOG.warning("Drain of job %s raised: %s", self.job_id, exc, exc_info=True)
            self.add_message("drain of job %s raised: %s" % (self.job_id, exc),
                             JobMessage.JOB_MESSAGE_WARNING)

    def _cancel_result(self, result: JobResult) -> None:
        try:
            result.cancel()
        except Exception as exc:
            _LOG.warning("Cancel of job %s raised: %s", self.job_id, exc,
                         exc_info=True)
            self.add_message("cancel of job %s raised: %s" % (self.job_id, exc),
                             JobMessage.JOB_MESSAGE_WARNING)

    def to_job_info(self) -> beam_job_api_pb2.JobInfo:
        return beam_job_api_pb2.JobInfo(
            job_id=self.job_id, job_name=self.job_name,
            pipeline_options=self.pipeline_options,
            state=self.state)  # type: ignore[arg-type]
