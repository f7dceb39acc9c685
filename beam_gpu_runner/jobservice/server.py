"""The job server: one gRPC server carrying Beam's JobService and
ArtifactStagingService, running jobs through an injected executor.

    server = JobServer(executor, host="127.0.0.1", port=0)
    port = server.start()
    ...   # clients: PortableRunner --job_endpoint=127.0.0.1:<port>
    server.stop()   # cancels running jobs, waits for them, stops serving
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Optional

import grpc
from apache_beam.portability.api import beam_artifact_api_pb2_grpc, beam_job_api_pb2_grpc
from apache_beam.utils.thread_pool_executor import UnboundedThreadPoolExecutor

from beam_gpu_runner.jobservice.artifacts import ArtifactStore
from beam_gpu_runner.jobservice.executor import JobExecutor
from beam_gpu_runner.jobservice.job_options import ServerJobDefaults
from beam_gpu_runner.jobservice.service import JobService

_LOGGER = logging.getLogger(__name__)

_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.max_ping_strikes", 0),
]

_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class JobServerError(RuntimeError):
    """The job server could not start."""

    def __init__(self, operation: str, address: str, reason: str) -> None:
        super().__init__(operation, address, reason)
        self.operation = operation
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        return "job server %s on %s failed: %s" % (self.operation, self.address, self.reason)


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    return "%s:%d" % (host, port)


class JobServer:
    """A Beam Job API server for ``executor``.

    ``advertised_host`` is the host name given to clients for artifact staging
    (default: ``host``, or this machine's name when ``host`` is a wildcard).
    ``shutdown_timeout_s`` bounds how long ``stop`` waits for cancelled jobs.
    ``keep_staged`` keeps each job's staged files after it ends.
    """

    def __init__(self,
                 executor: JobExecutor,
                 host: str = "127.0.0.1",
                 port: int = 0,
                 *,
                 staging_dir: Optional[str] = None,
                 defaults: ServerJobDefaults = ServerJobDefaults(),
                 advertised_host: Optional[str] = None,
                 shutdown_timeout_s: float = 30.0,
                 keep_staged: bool = False) -> None:
        self.host = host
        self.requested_port = port
        self.port: Optional[int] = None
        self.shutdown_timeout_s = shutdown_timeout_s
        if advertised_host is None:
            advertised_host = socket.gethostname() if host in _WILDCARD_HOSTS else host
        self.advertised_host = advertised_host
        self.artifacts = ArtifactStore(staging_dir, keep_staged=keep_staged)
        self.service = JobService(executor, self.artifacts, defaults,
                                  artifact_endpoint=self._artifact_endpoint)
        self._server: Optional[grpc.Server] = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise JobServerError("endpoint", _bind_address(self.host, self.requested_port),
                                 "the server is not started")
        return _bind_address(self.advertised_host, self.port)

    def _artifact_endpoint(self) -> Optional[str]:
        return self.endpoint if self.port is not None else None

    def start(self) -> int:
        """Start serving; return the port (the chosen one when ``port`` was 0)."""
        with self._lock:
            if self._server is not None:
                assert self.port is not None
                return self.port
            address = _bind_address(self.host, self.requested_port)
            server = grpc.server(UnboundedThreadPoolExecutor(), options=_GRPC_OPTIONS)
            beam_job_api_pb2_grpc.add_JobServiceServicer_to_server(self.service, server)
            beam_artifact_api_pb2_grpc.add_ArtifactStagingServiceServicer_to_server(
                self.artifacts.service, server)
            try:
                port = server.add_insecure_port(address)
            except RuntimeError as exc:
                raise JobServerError("bind", address, str(exc)) from None
            if port == 0:
                raise JobServerError("bind", address, "the port is not available")
            server.start()
            self._server = server
            self.port = port
        _LOGGER.info("Beam job server listening on %s (bound %s)",
                     self.endpoint, _bind_address(self.host, port))
        return port

    def stop(self, grace_s: float = 1.0) -> None:
        """Cancel unfinished jobs, wait for them (bounded), stop serving."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        jobs = self.service.cancel_all()
        if jobs:
            _LOGGER.info("Stopping: cancelled %d running job(s): %s",
                         len(jobs), ", ".join(j.job_id for j in jobs))
        deadline = time.monotonic() + self.shutdown_timeout_s
        for job in jobs:
            if not job.wait_until_terminal(max(0.0, deadline - time.monotonic())):
                _LOGGER.warning("Job %s did not end within %.0f s of its cancel "
                                "(state %s)", job.job_id, self.shutdown_timeout_s, job.state)
        server.stop(grace_s).wait()
        self.artifacts.close()
        _LOGGER.info("Beam job server on port %s stopped", self.port)

    def __enter__(self) -> "JobServer":
        self.start()
        return self

    def __exit__(self, *unused: object) -> None:
        self.stop()
