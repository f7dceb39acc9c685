"""Job-level failures. Args-only constructors, so they pickle across processes."""
from __future__ import annotations


class JobFailedError(RuntimeError):
    """The job failed; the message names the stage and carries the worker's error."""


class JobCancelledError(RuntimeError):
    """The job was cancelled before it finished."""


class JobNotDrainableError(RuntimeError):
    """``drain()`` of a job that ended or is being cancelled."""
