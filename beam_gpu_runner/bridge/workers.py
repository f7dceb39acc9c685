"""The Fn API services of a job, and the runner's handle on one worker.

Beam's worker handlers talk to a worker over its control and data
connections. ``Worker`` is what the rest of the runner holds instead: the
same connections, plus ``stop_requests``, after which every request fails at
once (a pool thread that took the worker just before a cancel would otherwise
send its ProcessBundle after the stop and wait forever on Beam's future: seen
as a cancelled job whose pool never shut down).
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from beam_gpu_runner.bridge.beam import worker_handlers

GrpcWorkerHandler = worker_handlers.GrpcWorkerHandler
WorkerHandler = worker_handlers.WorkerHandler
GrpcServer = worker_handlers.GrpcServer
StateServicer = worker_handlers.StateServicer


def new_grpc_server(state: Any, provision_info: Any, manager: Any) -> Any:
    """A job's control, data, state, logging and provision services.

    ``manager`` is what Beam types as its WorkerHandlerManager; it must answer
    ``get_process_bundle_descriptor`` and ``get_worker``."""
    return worker_handlers.GrpcServer(state, provision_info, manager)


def external_worker(environment: Any, state: Any, provision_info: Any,
                    server: Any) -> Any:
    """Beam's handler for an EXTERNAL/LOOPBACK environment: it asks the
    client's worker pool to start the worker."""
    return worker_handlers.WorkerHandler.create(environment, state, provision_info, server)


def is_connected(handler: Any) -> bool:
    """Whether the worker has connected to the control service."""
    return bool(handler.control_conn._state
                == worker_handlers.BeamFnControlServicer.STARTED_STATE)


def has_pending_requests(handler: Any) -> bool:
    """Whether requests sent to the worker still wait for their answer."""
    return bool(handler.control_conn._futures_by_id)


class WorkerGoneError(RuntimeError):
    """A request to a worker that is known to be lost (one message arg)."""


class Worker:
    """A started worker as the pool hands it out; see the module docstring."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.worker_id: str = handler.worker_id
        self._lock = threading.Lock()
        self._refusal: Optional[BaseException] = None

    @property
    def data_conn(self) -> Any:
        return self.handler.data_conn

    def push(self, request: Any) -> Any:
        """Send a control request (a future of its answer); after a stop, or
        once the worker is known lost, raise at once instead (Beam's control
        connection would queue the request, and its future would never end)."""
        with self._lock:
            refusal = self._refusal
            lost = self.lost
            if refusal is None and not lost:
                return self.handler.control_conn.push(request)
        if refusal is not None:
            raise type(refusal)(*refusal.args)
        raise WorkerGoneError(str(lost))

    def stop_requests(self, error: BaseException) -> None:
        """Fail what waits on the worker, and every request from now on."""
        with self._lock:
            self._refusal = error
        self.handler.control_conn.abort(error)

    @property
    def lost(self) -> Optional[str]:
        return getattr(self.handler, "lost", None)

    @property
    def process(self) -> Any:
        return getattr(self.handler, "process", None)

    def __repr__(self) -> str:
        return "Worker(%s)" % self.worker_id


__all__ = ["GrpcWorkerHandler", "Worker", "WorkerHandler", "external_worker",
           "has_pending_requests", "is_connected", "new_grpc_server"]
