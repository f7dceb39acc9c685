"""The job server: one gRPC server carrying Beam's JobService and
ArtifactStagingService, running jobs through an injected executor.

    server = JobServer(executor, host="127.0.0.1", port=0)
    port = server.start()
    ...   # clients: PortableRunner --job_endpoint=127.0.0.1:<port>
    server.stop()   # cancels running jobs, waits for them, stops serving

Access: loopback by default; bound beyond loopback it needs ``allow_from``
(CIDRs, checked on every RPC and web UI request) or ``insecure``
(``beam_gpu_runner.ui.access``). A taken port fails ``start`` at once (gRPC's
SO_REUSEPORT is off, so two servers never share a port). ``ui_port`` also
serves the web UI over the server's jobs (``beam_gpu_runner.ui``).
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import Optional, Sequence

import grpc
from apache_beam.portability.api import beam_artifact_api_pb2_grpc, beam_job_api_pb2_grpc
from apache_beam.utils.thread_pool_executor import UnboundedThreadPoolExecutor

from beam_gpu_runner.jobservice.access import AllowListInterceptor
from beam_gpu_runner.jobservice.artifacts import ArtifactStore
from beam_gpu_runner.jobservice.executor import JobExecutor
from beam_gpu_runner.jobservice.job_options import ServerJobDefaults
from beam_gpu_runner.jobservice.service import JobService
from beam_gpu_runner.jobservice.watch import JobServerStatus
from beam_gpu_runner.resources.config import ExternalResourceConfig
from beam_gpu_runner.ui.access import access_policy
from beam_gpu_runner.ui.devices import LocalDevices
from beam_gpu_runner.ui.server import UiServer, UiServerError

_LOG = logging.getLogger(__name__)

_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.max_ping_strikes", 0),
    # gRPC sets SO_REUSEPORT by default: a second server on a taken port
    # would bind too and share its connections. Off, the second one fails.
    ("grpc.so_reuseport", 0),
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


def _port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound because something holds it."""
    if port == 0:
        return False
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((bare if bare not in ("", "*") else "0.0.0.0", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


class JobServer:
    """A Beam Job API server for ``executor``.

    ``advertised_host`` is the host name given to clients for artifact staging
    (default: ``host``, or this machine's name when ``host`` is a wildcard).
    ``shutdown_timeout_s`` bounds how long ``stop`` waits for cancelled jobs.
    ``keep_staged`` keeps each job's staged files after it ends.
    ``allow_from`` / ``insecure``: who may connect when ``host`` (or
    ``ui_host``) is beyond loopback (see the module docstring).
    ``ui_port`` serves the web UI on ``ui_host`` (None: no UI; 0: a free port).
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
                 keep_staged: bool = False,
                 allow_from: Sequence[str] = (),
                 insecure: bool = False,
                 ui_port: Optional[int] = None,
                 ui_host: str = "127.0.0.1") -> None:
        self.host = host
        self.allow_from = tuple(allow_from)
        self.insecure = insecure
        self.ui_port = ui_port
        self.ui_host = ui_host
        self.ui: Optional[UiServer] = None
        self._defaults = defaults
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

    @property
    def ui_url(self) -> Optional[str]:
        return self.ui.url if self.ui is not None and self.ui.port is not None else None

    def _bind_failure(self, address: str, detail: str) -> JobServerError:
        if _port_in_use(self.host, self.requested_port):
            return JobServerError(
                "bind", address, "port %d is already in use (another job server?); "
                "stop whatever listens there or pick another --port (0 picks a free one)"
                % self.requested_port)
        return JobServerError("bind", address, detail)

    def start(self) -> int:
        """Start serving; return the port (the chosen one when ``port`` was 0).

        Raises ``AccessConfigError`` (before binding anything) when a host is
        beyond loopback without ``allow_from`` or ``insecure``, and
        ``JobServerError`` when a port cannot be bound.
        """
        with self._lock:
            if self._server is not None:
                assert self.port is not None
                return self.port
            policy = access_policy("job server", self.host, self.allow_from, self.insecure)
            ui_policy = None
            if self.ui_port is not None:
                ui_policy = access_policy("web UI", self.ui_host, self.allow_from,
                                          self.insecure)
            ui: Optional[UiServer] = None
            if ui_policy is not None:   # first: a taken UI port leaves nothing bound
                assert self.ui_port is not None
                ui = UiServer(JobServerStatus(self.service, self._devices()), self.ui_host,
                              self.ui_port, ui_policy)
                try:
                    ui.start()
                except UiServerError as exc:
                    raise JobServerError("start web UI", "%s:%d" % (
                        self.ui_host, self.ui_port), str(exc)) from None
            address = _bind_address(self.host, self.requested_port)
            server = grpc.server(
                UnboundedThreadPoolExecutor(), options=_GRPC_OPTIONS,
                interceptors=[] if policy.open else [AllowListInterceptor(policy)])
            beam_job_api_pb2_grpc.add_JobServiceServicer_to_server(self.service, server)
            beam_artifact_api_pb2_grpc.add_ArtifactStagingServiceServicer_to_server(
                self.artifacts.service, server)
            try:
                port = server.add_insecure_port(address)
                if port == 0:
                    raise self._bind_failure(address, "the port is not available")
            except (RuntimeError, JobServerError) as exc:
                if ui is not None:
                    ui.stop()
                if isinstance(exc, JobServerError):
                    raise
                raise self._bind_failure(address, str(exc)) from None
            self.ui = ui
            server.start()
            self._server = server
            self.port = port
        _LOG.info("Beam job server listening on %s (bound %s)%s",
                     self.endpoint, _bind_address(self.host, port),
                     "" if policy.open else "; clients allowed from %s" % policy.describe())
        if self.ui is not None:
            _LOG.info("Web UI at %s (jobs, devices; Prometheus metrics at %smetrics)",
                         self.ui.url, self.ui.url)
        return port

    def _devices(self) -> Optional[LocalDevices]:
        """The devices page's source: the drivers every job gets by default."""
        try:
            config = ExternalResourceConfig.load(
                self._defaults.external_resources_config,
                self._defaults.external_resources)
        except ValueError as exc:   # ConfigError: jobs will say so when they run
            _LOG.warning("web UI: the server's external resource flags are invalid "
                            "(%s); the devices page lists leased devices only", exc)
            config = ExternalResourceConfig()
        return LocalDevices(config)

    def stop(self, grace_s: float = 1.0) -> None:
        """Cancel unfinished jobs, wait for them (bounded), stop serving."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        jobs = self.service.cancel_all()
        if jobs:
            _LOG.info("Stopping: cancelled %d running job(s): %s",
                         len(jobs), ", ".join(j.job_id for j in jobs))
        deadline = time.monotonic() + self.shutdown_timeout_s
        for job in jobs:
            if not job.wait_until_terminal(max(0.0, deadline - time.monotonic())):
                _LOG.warning("Job %s did not end within %.0f s of its cancel "
                                "(state %s)", job.job_id, self.shutdown_timeout_s, job.state)
        server.stop(grace_s).wait()
        ui, self.ui = self.ui, None
        if ui is not None:
            ui.stop()
            source = ui.source
            if isinstance(source, JobServerStatus):
                source.close()
        self.artifacts.close()
        _LOG.info("Beam job server on port %s stopped", self.port)

    def __enter__(self) -> "JobServer":
        self.start()
        return self

    def __exit__(self, *unused: object) -> None:
        self.stop()
