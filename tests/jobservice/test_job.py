"""The job state machine: transitions, history, streams, cancel."""
from __future__ import annotations

import pickle
import threading

import pytest
from apache_beam.portability.api import beam_job_api_pb2, beam_runner_api_pb2
from google.protobuf import struct_pb2

from beam_gpu_runner.jobservice.job import (
    DrainUnsupportedError, InvalidTransitionError, Job, JobState, StateEvent, is_terminal,
    job_state_of)

from .fakes import FakeResult, UndrainableResult

JobMessage = beam_job_api_pb2.JobMessage


def new_job(job_id: str = "j1") -> Job:
    return Job(job_id, "name", beam_runner_api_pb2.Pipeline(), struct_pb2.Struct())


def states(job: Job) -> list[int]:
    return [e.state for e in job.state_history()]


def running(result: FakeResult) -> Job:
    """A job whose thread has the result (RUNNING)."""
    job = new_job()
    job.start(lambda: result)
    for event in job.state_stream():
        if event.state == JobState.RUNNING:
            break
    return job


def started_behind_gate(result: FakeResult) -> tuple[Job, threading.Event]:
    """A started job whose executor hands over ``result`` when the gate opens."""
    job = new_job()
    gate = threading.Event()

    def launch() -> FakeResult:
        gate.wait()
        return result

    job.start(launch)
    return job, gate


def test_new_job_is_stopped() -> None:
    job = new_job()
    assert job.state == JobState.STOPPED
    assert job.result is None


def test_happy_path_history() -> None:
    job = new_job()
    result = FakeResult()
    job.start(lambda: result)
    result.finish()
    assert job.wait_until_terminal()
    assert states(job) == [JobState.STOPPED, JobState.STARTING, JobState.RUNNING,
                           JobState.DONE]
    assert job.result is result


def test_failed_job_records_error_message() -> None:
    job = new_job()
    result = FakeResult()
    job.start(lambda: result)
    result.fail("kaboom in stage 3")
    job.wait_until_terminal()
    assert job.state == JobState.FAILED
    errors = [m for m in job.message_stream() if isinstance(m, JobMessage)
              and m.importance == JobMessage.JOB_MESSAGE_ERROR]
    assert errors and "kaboom in stage 3" in errors[-1].message_text
    assert "j1" in errors[-1].message_text


def test_launch_failure_fails_job() -> None:
    job = new_job()

    def launch() -> FakeResult:
        raise RuntimeError("executor refused")

    job.start(launch)
    job.wait_until_terminal()
    assert states(job) == [JobState.STOPPED, JobState.STARTING, JobState.FAILED]
    texts = [m.message_text for m in job.message_stream() if isinstance(m, JobMessage)]
    assert any("executor refused" in t for t in texts)


def test_cancel_running_job() -> None:
    result = FakeResult()
    job = running(result)
    assert job.cancel() in (JobState.CANCELLING, JobState.CANCELLED)
    job.wait_until_terminal()
    assert states(job)[-2:] == [JobState.CANCELLING, JobState.CANCELLED]
    assert result.cancel_calls == 1


def test_cancel_before_result_exists_cancels_result_when_it_arrives() -> None:
    result = FakeResult()
    job, gate = started_behind_gate(result)
    assert job.cancel() == JobState.CANCELLING
    gate.set()
    job.wait_until_terminal()
    assert job.state == JobState.CANCELLED
    assert result.cancel_calls == 1


def test_drain_running_job_ends_drained() -> None:
    result = FakeResult()
    job = running(result)
    assert job.drain() == JobState.DRAINING
    assert job.drain() == JobState.DRAINING       # asking twice: one drain
    assert result.drain_calls == 1
    result.finish(drained=True)
    job.wait_until_terminal()
    assert states(job)[-3:] == [JobState.RUNNING, JobState.DRAINING, JobState.DRAINED]


def test_a_drained_job_whose_executor_says_done_ends_drained() -> None:
    result = FakeResult()
    job = running(result)
    job.drain()
    result.finish()
    job.wait_until_terminal()
    assert job.state == JobState.DRAINED


def test_drain_before_result_exists_drains_result_when_it_arrives() -> None:
    result = FakeResult()
    job, gate = started_behind_gate(result)
    assert job.drain() == JobState.STARTING
    gate.set()
    for event in job.state_stream():
        if event.state == JobState.DRAINING:
            break
    assert result.drain_calls == 1
    result.finish(drained=True)
    job.wait_until_terminal()
    assert states(job) == [JobState.STOPPED, JobState.STARTING, JobState.DRAINING,
                           JobState.DRAINED]


def test_a_draining_job_can_still_be_cancelled() -> None:
    result = FakeResult()
    job = running(result)
    job.drain()
    job.cancel()
    job.wait_until_terminal()
    assert states(job)[-3:] == [JobState.DRAINING, JobState.CANCELLING, JobState.CANCELLED]


def test_drain_refusals_name_the_state() -> None:
    with pytest.raises(InvalidTransitionError, match="STOPPED to DRAINING"):
        new_job().drain()                         # never run
    result = FakeResult()
    job = running(result)
    job.cancel()
    with pytest.raises(InvalidTransitionError, match="(CANCELLING|CANCELLED) to DRAINING"):
        job.drain()
    job.wait_until_terminal()
    with pytest.raises(InvalidTransitionError, match="CANCELLED to DRAINING"):
        job.drain()
    assert result.drain_calls == 0


def test_drain_of_a_result_without_drain_is_unsupported() -> None:
    job = running(UndrainableResult())
    with pytest.raises(DrainUnsupportedError, match="j1 cannot drain.*UndrainableResult"):
        job.drain()
    assert job.state == JobState.RUNNING
    job.cancel()
    job.wait_until_terminal()


def test_cancel_prepared_job() -> None:
    job = new_job()
    assert job.cancel() == JobState.CANCELLED
    assert states(job) == [JobState.STOPPED, JobState.CANCELLED]


def test_cancel_finished_job_is_refused_naming_state() -> None:
    job = new_job()
    result = FakeResult()
    job.start(lambda: result)
    result.finish()
    job.wait_until_terminal()
    with pytest.raises(InvalidTransitionError) as info:
        job.cancel()
    assert "DONE" in str(info.value) and "j1" in str(info.value)


def test_start_twice_is_refused() -> None:
    job = new_job()
    result = FakeResult()
    job.start(lambda: result)
    with pytest.raises(InvalidTransitionError):
        job.start(lambda: result)
    result.finish()
    job.wait_until_terminal()


def test_state_stream_replays_history_then_follows() -> None:
    job = new_job()
    result = FakeResult()
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.extend(e.state for e in job.state_stream()))
    reader.start()
    job.start(lambda: result)
    result.finish()
    reader.join()
    assert seen == [JobState.STOPPED, JobState.STARTING, JobState.RUNNING, JobState.DONE]
    # A late reader sees the same history and ends.
    assert [e.state for e in job.state_stream()] == seen


def test_stream_ends_when_client_goes_away() -> None:
    job = new_job()
    active = [True]
    stream = job.state_stream(lambda: active[0])
    assert next(stream).state == JobState.STOPPED
    active[0] = False
    assert list(stream) == []


def test_message_stream_interleaves_messages_and_states() -> None:
    job = new_job()
    job.add_message("hello", JobMessage.JOB_MESSAGE_WARNING)
    result = FakeResult()
    job.start(lambda: result)
    result.finish()
    entries = list(job.message_stream())
    assert isinstance(entries[0], StateEvent) and entries[0].state == JobState.STOPPED
    assert isinstance(entries[1], JobMessage) and entries[1].message_text == "hello"
    assert isinstance(entries[-1], StateEvent) and entries[-1].state == JobState.DONE


def test_state_mapping() -> None:
    assert job_state_of("DONE") == JobState.DONE
    assert job_state_of("PENDING") == JobState.STARTING
    assert job_state_of("NONSENSE") == JobState.UNSPECIFIED
    assert job_state_of(JobState.CANCELLED) == JobState.CANCELLED
    assert is_terminal(JobState.CANCELLED) and not is_terminal(JobState.CANCELLING)


def test_errors_pickle() -> None:
    error = InvalidTransitionError("j9", JobState.DONE, JobState.CANCELLED)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.job_id == "j9"


def test_cancel_while_start_raises_ends_cancelled() -> None:
    job = new_job()
    gate = threading.Event()

    def launch() -> FakeResult:
        gate.wait()
        raise RuntimeError("interrupted start")

    job.start(launch)
    assert job.cancel() == JobState.CANCELLING
    gate.set()
    job.wait_until_terminal()
    assert job.state == JobState.CANCELLED
