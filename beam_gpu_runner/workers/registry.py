"""The job's Fn API services and the worker handlers that use them.

Beam's execution classes (``FnApiRunnerExecutionContext``, ``BundleContextManager``)
expect a "worker handler manager"; this registry is ours: one gRPC server per
job (control, data, state, logging, provision), process bundle descriptors,
and handlers by worker id.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from apache_beam.portability.api import beam_fn_api_pb2, endpoints_pb2

from beam_gpu_runner.bridge.workers import StateServicer, Worker, new_grpc_server
from beam_gpu_runner.workers import lost_streams
from beam_gpu_runner.workers.logs import LogServer

_LOG = logging.getLogger(__name__)


class _Endpoints:
    """What Beam's execution context asks of ``worker_handlers[0]``.

    Descriptors come from the job's server. Beam's merging-window support
    also talks to that handler directly (``data_conn``/``control_conn``) to
    run a window merge on a worker: those start the registry's utility worker.
    """

    def __init__(self, host: str, server: Any,
                 registry: "WorkerRegistry") -> None:
        self._host = host
        self._server = server
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        if name in ("data_conn", "control_conn"):
            return getattr(self._registry.utility_worker().handler, name)
        raise AttributeError("%s has no attribute %r" % (type(self).__name__, name))

    def data_api_service_descriptor(self) -> endpoints_pb2.ApiServiceDescriptor:
        return endpoints_pb2.ApiServiceDescriptor(
            url="%s:%s" % (self._host, self._server.data_port))

    def state_api_service_descriptor(self) -> endpoints_pb2.ApiServiceDescriptor:
        return endpoints_pb2.ApiServiceDescriptor(
            url="%s:%s" % (self._host, self._server.state_port))


class WorkerRegistry:
    def __init__(self, provision_info: Any, host: str) -> None:
        lost_streams.install()   # a worker's end: one line, not Beam's tracebacks
        self.state_servicer = StateServicer()
        self.provision_info = provision_info
        self._descriptors: dict[str, beam_fn_api_pb2.ProcessBundleDescriptor] = {}
        self._workers: dict[str, Any] = {}
        self._lock = threading.Lock()
        # Beam types this as its WorkerHandlerManager; we provide the two
        # methods it calls (get_process_bundle_descriptor, get_worker).
        self.grpc_server: Optional[Any] = new_grpc_server(
            self.state_servicer, provision_info, self)
        self._endpoints = _Endpoints(host, self.grpc_server, self)
        self._utility_start: Optional[Callable[[], Worker]] = None
        self._utility_stop: Optional[Callable[[Worker], None]] = None
        self._utility: Optional[Worker] = None
        self._utility_lock = threading.Lock()   # starting it takes self._lock
        self._close_callbacks: list[Callable[[], None]] = []
        self._logs = LogServer()
        self.logging_address = "%s:%d" % (host, self._logs.port)

    # -- what Beam's execution context calls --------------------------------
    def get_worker_handlers(self, environment_id: Optional[str], num_workers: int
                            ) -> list[_Endpoints]:
        return [self._endpoints]

    def register_process_bundle_descriptor(
            self, descriptor: beam_fn_api_pb2.ProcessBundleDescriptor) -> None:
        with self._lock:
            self._descriptors[descriptor.id] = descriptor

    def get_process_bundle_descriptor(
            self, request: beam_fn_api_pb2.GetProcessBundleDescriptorRequest
    ) -> beam_fn_api_pb2.ProcessBundleDescriptor:
        with self._lock:
            return self._descriptors[request.process_bundle_descriptor_id]

    def get_worker(self, worker_id: str) -> Any:
        with self._lock:
            return self._workers[worker_id]

    # -- ours -----------------------------------------------------------------
    def add(self, handler: Any) -> None:
        with self._lock:
            self._workers[handler.worker_id] = handler

    def remove(self, handler: Any) -> None:
        with self._lock:
            self._workers.pop(handler.worker_id, None)

    def set_utility_worker_factory(self, start: Callable[[], Worker],
                                   stop: Callable[[Worker], None]) -> None:
        self._utility_start, self._utility_stop = start, stop

    def utility_worker(self) -> Worker:
        """A worker for the runner's own Fn API calls (window merging)."""
        with self._utility_lock:
            if self._utility is None:
                if self._utility_start is None:
                    raise RuntimeError(
                        "utility_worker: no worker factory was set for this job")
                self._utility = self._utility_start()
            return self._utility

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after the services stop (release devices, placement)."""
        self._close_callbacks.append(callback)

    def close(self) -> None:
        with self._utility_lock:
            utility, self._utility = self._utility, None
        if utility is not None and self._utility_stop is not None:
            self._utility_stop(utility)
        self._logs.close()
        if self.grpc_server is not None:
            self.grpc_server.close()
            self.grpc_server = None
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _LOG.warning("WorkerRegistry.close: cleanup %r failed", callback,
                             exc_info=True)
