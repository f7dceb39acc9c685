"""The job lifecycle state machine: requests in, actions out (table-driven)."""
from __future__ import annotations

import pickle

import pytest

from beam_gpu_runner.lifecycle import (
    Action, CANCELLED, CANCELLING, DONE, DRAINED, DRAINING, FAILED, Lifecycle,
    LifecycleError, RUNNING, STARTING, STOPPED)


def run(steps: list[str]) -> tuple[Lifecycle, list[Action]]:
    """Apply steps: start, started, cancel, drain, done, failed, cancelled."""
    life = Lifecycle(job="j1")
    actions: list[Action] = []
    for step in steps:
        if step == "start":
            life.start()
        elif step == "started":
            actions += life.execution_started()
        elif step == "cancel":
            actions += life.cancel()
        elif step == "drain":
            actions += life.drain()
        elif step in ("done", "failed", "cancelled"):
            life.finished(step.upper())
        else:
            raise AssertionError(step)
    return life, actions


@pytest.mark.parametrize("steps, state, actions, history", [
    (["start", "started", "done"], DONE, [], [STOPPED, STARTING, RUNNING, DONE]),
    (["start", "started", "failed"], FAILED, [], [STOPPED, STARTING, RUNNING, FAILED]),
    # a cancel of a running execution acts at once
    (["start", "started", "cancel", "cancelled"], CANCELLED, [Action.CANCEL],
     [STOPPED, STARTING, RUNNING, CANCELLING, CANCELLED]),
    # failing while being cancelled is being cancelled
    (["start", "started", "cancel", "failed"], CANCELLED, [Action.CANCEL],
     [STOPPED, STARTING, RUNNING, CANCELLING, CANCELLED]),
    # finishing before the cancel took effect keeps its own end
    (["start", "started", "cancel", "done"], DONE, [Action.CANCEL],
     [STOPPED, STARTING, RUNNING, CANCELLING, DONE]),
    # a cancel before the execution exists acts when it starts
    (["start", "cancel", "started", "cancelled"], CANCELLED, [Action.CANCEL],
     [STOPPED, STARTING, CANCELLING, CANCELLED]),
    # a drain ends DRAINED when the execution finishes
    (["start", "started", "drain", "done"], DRAINED, [Action.DRAIN],
     [STOPPED, STARTING, RUNNING, DRAINING, DRAINED]),
    (["start", "drain", "started", "done"], DRAINED, [Action.DRAIN],
     [STOPPED, STARTING, DRAINING, DRAINED]),
    # a draining job may still be cancelled, and a second drain does nothing
    (["start", "started", "drain", "drain", "cancel", "cancelled"], CANCELLED,
     [Action.DRAIN, Action.CANCEL],
     [STOPPED, STARTING, RUNNING, DRAINING, CANCELLING, CANCELLED]),
    (["start", "started", "drain", "failed"], FAILED, [Action.DRAIN],
     [STOPPED, STARTING, RUNNING, DRAINING, FAILED]),
    # a prepared job that is cancelled never runs
    (["cancel"], CANCELLED, [], [STOPPED, CANCELLED]),
    # a second cancel asks nothing more
    (["start", "started", "cancel", "cancel", "cancelled"], CANCELLED, [Action.CANCEL],
     [STOPPED, STARTING, RUNNING, CANCELLING, CANCELLED]),
    # a failed start
    (["start", "failed"], FAILED, [], [STOPPED, STARTING, FAILED]),
    (["start", "cancel", "failed"], CANCELLED, [], [STOPPED, STARTING, CANCELLING, CANCELLED]),
])
def test_transitions(steps, state, actions, history):
    life, got = run(steps)
    assert life.state == state and got == actions and life.history == history


@pytest.mark.parametrize("steps, request_, why", [
    (["start", "started", "done"], "cancel", "already ended"),
    (["start", "started", "done"], "drain", "already ended"),
    ([], "drain", "never run"),
    (["start", "started", "cancel"], "drain", "being cancelled"),
    (["start"], "start", "never-run job"),
])
def test_refusals_name_the_job_the_request_and_the_state(steps, request_, why):
    life, _ = run(steps)
    with pytest.raises(LifecycleError) as info:
        getattr(life, request_)()
    text = str(info.value)
    assert "j1" in text and request_ in text and life.state in text and why in text


def test_a_finished_job_stays_finished():
    life, _ = run(["start", "started", "done"])
    assert life.finished(FAILED) == DONE
    assert life.execution_started() == []


def test_errors_pickle():
    error = LifecycleError("j1", "drain", DONE, "the job already ended")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_only_ends_are_accepted_as_outcomes():
    with pytest.raises(ValueError, match="RUNNING"):
        Lifecycle().finished(RUNNING)
