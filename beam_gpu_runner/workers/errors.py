"""Worker failures. They cross threads and processes, so they pickle (args only)."""
from __future__ import annotations


class WorkerError(RuntimeError):
    pass


class WorkerStartError(WorkerError):
    """A worker process exited or never connected within its timeout."""


class WorkerLostError(WorkerError):
    """A worker process died while it held a bundle (the bundle may be retried)."""
