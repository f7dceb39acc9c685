"""One worker: a Beam Fn API worker handler whose process comes from a Placement."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from beam_gpu_runner.bridge.workers import (
    GrpcWorkerHandler, has_pending_requests, is_connected)
from beam_gpu_runner.placement.api import Placement, WorkerLaunch, WorkerProcess
from beam_gpu_runner.resources.requirements import StageRequirements
from beam_gpu_runner.workers.errors import WorkerLostError, WorkerStartError

_LOG = logging.getLogger(__name__)

_POLL_S = 0.005   # a reused worker connects in ~20 ms
_GOODBYE_S = 3.0   # how long an idle harness gets to exit by itself


class ProcessWorkerHandler(GrpcWorkerHandler):
    """Starts Beam's SDK harness through a placement and watches it.

    When the process dies while the runner still needs it, pending control
    futures are aborted and the data channel is closed, so a bundle running on
    it fails at once with ``WorkerLostError`` instead of hanging.
    """

    def __init__(
        self,
        state: Any,
        provision_info: Any,
        grpc_server: Any,
        placement: Placement,
        requirements: StageRequirements,
        pipeline_options_json: str,
        env: dict[str, str],
        start_timeout: float,
        logging_address: Optional[str] = None,
        on_lost: Optional[Callable[["ProcessWorkerHandler"], None]] = None,
    ) -> None:
        self._placement = placement
        super().__init__(state, provision_info, grpc_server)
        self._requirements = requirements
        self._options_json = pipeline_options_json
        self._env = env
        self._start_timeout = start_timeout
        self._logging_address = logging_address
        self._on_lost = on_lost
        self._process: Optional[WorkerProcess] = None
        self._stopping = False
        self.lost: Optional[str] = None

    def set_environment(self, env: dict[str, str]) -> None:
        """What the worker process gets on top of ours (its devices' variables,
        staged artifacts); set before ``start_worker``."""
        self._env = env

    def host_from_worker(self) -> str:
        return self._placement.advertise_host()

    @property
    def process(self) -> Optional[WorkerProcess]:
        return self._process

    def start_worker(self) -> None:
        launch = WorkerLaunch(
            worker_id=self.worker_id,
            control_address=self.control_address,
            logging_address=(self._logging_address
                             or self.logging_api_service_descriptor().url),
            pipeline_options_json=self._options_json,
            requirements=self._requirements,
            env=self._env)
        self._process = self._placement.start_worker(launch)
        self._await_connection(self._process)
        threading.Thread(target=self._watch, name="watch-%s" % self.worker_id,
                         daemon=True).start()

    def _await_connection(self, process: WorkerProcess) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not is_connected(self):
            if self._stopping:
                process.kill()
                raise WorkerStartError(
                    "start_worker: worker %s was stopped while starting (its job ended)"
                    % self.worker_id)
            if not process.is_alive():
                raise WorkerStartError(
                    "start_worker: worker %s exited before connecting to %s: %s%s"
                    % (self.worker_id, self.control_address, process.exit_description(),
                       _tail(process)))
            if time.monotonic() > deadline:
                process.kill()
                raise WorkerStartError(
                    "start_worker: worker %s did not connect to the control service at "
                    "%s within %.1fs (--worker_start_timeout); it was killed%s"
                    % (self.worker_id, self.control_address, self._start_timeout,
                       _tail(process)))
            time.sleep(_POLL_S)
        _LOG.debug("Worker %s connected", self.worker_id)

    def abort_start(self) -> None:
        """Give up a start in progress (``start_worker`` raises soon)."""
        self._stopping = True

    def _watch(self) -> None:
        process = self._process
        assert process is not None
        while process.is_alive() and not self._stopping:
            wait = getattr(process, "wait", None)
            if wait is not None:
                wait(0.5)
            else:
                time.sleep(0.2)
        if self._stopping:
            return
        self.lost = "worker %s died: %s" % (self.worker_id, process.exit_description())
        _LOG.warning("%s%s", self.lost, _tail(process))
        error = WorkerLostError(self.lost)
        self.control_conn.abort(error)
        try:
            self.data_conn.close()
        except Exception as exc:  # the channel may already be broken
            _LOG.debug("closing data channel of %s: %r", self.worker_id, exc)
            exc.__traceback__ = None   # see close()
        if self._on_lost is not None:
            self._on_lost(self)

    def stop_worker(self) -> None:
        self._stopping = True
        if self._process is not None:
            self._process.stop()

    def close(self) -> None:
        """End the worker; never wait for a running bundle.

        An idle worker is told over the Fn API and exits by itself, or is
        parked by its placement for the next job (``placement/warm.py``). A busy one
        (a cancel, a failed job) is stopped first, then whatever still waits
        on it fails with WorkerLostError.
        """
        self._stopping = True
        parked = False
        if self.lost is None and not has_pending_requests(self):
            # Idle: say goodbye over the Fn API, so the harness ends its streams
            # and exits by itself (no broken-stream tracebacks from either side),
            # or waits for the next job when the placement parks it.
            try:
                self.control_conn.close()
            except Exception as exc:
                _LOG.debug("closing the control channel of %s: %r", self.worker_id, exc)
                exc.__traceback__ = None
            park = getattr(self._placement, "park", None)
            parked = (park is not None and self._process is not None
                      and bool(park(self._process)))
            wait = getattr(self._process, "wait", None)
            if not parked and wait is not None:
                wait(_GOODBYE_S)
        if not parked:
            self.stop_worker()
        self.control_conn.abort(WorkerLostError(
            "worker %s was stopped while a request was pending" % self.worker_id))
        for channel in (self.control_conn, self.data_conn):
            try:
                channel.close()
            except Exception as exc:
                _LOG.debug("closing a channel of %s: %r", self.worker_id, exc)
                # Beam's data channel re-raises the exception object it keeps:
                # the traceback would pin this job's frames (and its execution
                # context) for as long as the channel lives.
                exc.__traceback__ = None


def _tail(process: WorkerProcess) -> str:
    tail_fn = getattr(process, "log_tail", None)
    tail = tail_fn() if tail_fn is not None else ""
    return ("\n--- last lines of its log ---\n" + tail) if tail else ""
