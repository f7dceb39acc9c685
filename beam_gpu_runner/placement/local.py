"""The default placement: each worker is a subprocess on this host.

A worker's stdout and stderr reach this process's stdout and stderr line by
line (``process_info.OutputPump``), as they would with Beam's DirectRunner;
stderr lines carry the worker id, ``(worker_3) ...``, once more than one
worker of the placement was started. Everything a worker writes is also kept
in ``<log folder>/<worker id>.log``; the folder is removed when the placement
closes, unless ``keep_logs()`` was called (a failed job) or it was given.

Workers run in their own session (``setsid``): a Ctrl-C in the terminal
interrupts the driver only, and the driver stops its workers itself. At
interpreter exit, workers of placements that were never closed are killed and
their folders removed (unless kept).
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from typing import Optional, Protocol, Sequence

from google.protobuf import text_format

from apache_beam.portability.api import endpoints_pb2

from beam_gpu_runner.placement import harness
from beam_gpu_runner.placement.api import WorkerLaunch
from beam_gpu_runner.placement.process_info import (
    LogFile, OutputPump, describe_returncode, read_log_tail)

_LOG = logging.getLogger(__name__)

#: Beam's SDK harness (with ~1 MB output messages), run with the runner's
#: own interpreter.
HARNESS_MODULE = harness.MODULE


def harness_env(launch: WorkerLaunch, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment sdk_worker_main reads, on top of ``base``."""
    env = dict(os.environ if base is None else base)
    env.update(
        CONTROL_API_SERVICE_DESCRIPTOR=text_format.MessageToString(
            endpoints_pb2.ApiServiceDescriptor(url=launch.control_address)),
        LOGGING_API_SERVICE_DESCRIPTOR=text_format.MessageToString(
            endpoints_pb2.ApiServiceDescriptor(url=launch.logging_address)),
        PIPELINE_OPTIONS=launch.pipeline_options_json,
        WORKER_ID=launch.worker_id,
    )
    env.update(launch.env)
    return env


def driver_python_path() -> str:
    """The driver's own import roots (not the interpreter's), for PYTHONPATH.

    Code the driver imported from a folder (a test module, a script's
    neighbours) must unpickle in the worker too, as it would in Beam's
    in-process DirectRunner.
    """
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if not os.path.isdir(path) or any(
                path == p or path.startswith(p + os.sep) for p in prefixes):
            continue
        if path not in roots:
            roots.append(path)
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join(roots + ([existing] if existing else []))


def harness_command() -> list[str]:
    return [sys.executable, "-m", HARNESS_MODULE]


class _Closable(Protocol):
    def close(self) -> None: ...


#: Seconds to wait for a worker's pipes to drain once it exited.
_DRAIN_S = 5.0


class LocalProcess:
    """A worker subprocess; its output goes to a log file whose tail we keep
    (and, through ``pumps``, to the driver's console)."""

    def __init__(self, worker_id: str, popen: "subprocess.Popen[bytes]", log_path: str,
                 log_file: _Closable, pumps: Sequence[OutputPump] = ()) -> None:
        self.worker_id = worker_id
        self.pid = popen.pid
        self.log_path = log_path
        self._popen = popen
        self._log_file = log_file
        self._pumps = tuple(pumps)
        self._own_group = False
        self._lock = threading.Lock()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def exit_description(self) -> str:
        return "%s (pid %d)" % (describe_returncode(self._popen.poll()), self.pid)

    def log_tail(self, lines: int = 20) -> str:
        if not self.is_alive():
            self._drain(2.0)   # its last words may still be in the pipe
        return read_log_tail(self.log_path, lines)

    def _signal(self, sig: int) -> None:
        """``sig`` to the worker and, when it leads its own process group,
        to what it started (only while it runs: its pid is ours till reaped)."""
        if self._own_group:
            try:
                os.killpg(self.pid, sig)
                return
            except (ProcessLookupError, PermissionError):
                pass
        self._popen.send_signal(sig)

    def _drain(self, timeout: float) -> None:
        for pump in self._pumps:
            if not pump.join(timeout):
                _LOG.debug("Output of worker %s still open after %.1fs (a child of it "
                           "holds it?)", self.worker_id, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._popen.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self._popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    _LOG.warning("Worker %s did not stop in %.1fs; killing it",
                                 self.worker_id, timeout)
                    self._signal(signal.SIGKILL)
                    self._popen.wait()
            self._drain(_DRAIN_S)
            self._log_file.close()

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._signal(signal.SIGKILL)
            self._popen.wait()
        self._drain(_DRAIN_S)


class LocalPlacement:
    name = "local"
    assigns_devices = False

    def __init__(self, log_dir: Optional[str] = None,
                 prefixed: Sequence[str] = ("stderr",)) -> None:
        """Worker logs go to ``log_dir``; by default a temp folder removed on close.

        ``prefixed`` names the console streams whose lines get the worker id
        once more than one worker was started. stdout is left as the workers
        wrote it by default: it is the pipelines' data (``beam.Map(print)``,
        CSV lines), which the user reads or pipes as on Beam's DirectRunner.
        """
        self._owns_dir = log_dir is None
        self._log_dir = log_dir or tempfile.mkdtemp(prefix="beam-gpu-runner-workers-")
        os.makedirs(self._log_dir, exist_ok=True)
        self._prefixed = frozenset(prefixed)
        self._lock = threading.Lock()
        self._processes: list[LocalProcess] = []
        self._keep = False
        self._closed = False
        _OPEN.add(self)

    @property
    def log_dir(self) -> str:
        return self._log_dir

    def advertise_host(self) -> str:
        return "localhost"

    def _prefix(self, stream: str, worker_id: str) -> bytes:
        if stream not in self._prefixed or len(self._processes) < 2:
            return b""
        return ("(%s) " % worker_id).encode("utf-8", "replace")

    def start_worker(self, launch: WorkerLaunch) -> LocalProcess:
        log_path = os.path.join(self._log_dir, "%s.log" % launch.worker_id)
        log_file = LogFile(log_path)
        # The harness keeps staged files and main sessions here.
        work_dir = os.path.join(self._log_dir, launch.worker_id)
        os.makedirs(work_dir, exist_ok=True)
        env = harness_env(launch)
        # A job's staged artifacts (launch.env from workers/staging.py) win;
        # otherwise the worker's own folder.
        env.setdefault("SEMI_PERSISTENT_DIRECTORY", work_dir)
        # The job's installed requirements first, then the driver's roots.
        env["PYTHONPATH"] = os.pathsep.join(
            [p for p in (launch.env.get("PYTHONPATH"), driver_python_path()) if p])
        _LOG.info("Starting worker %s (%s), log %s", launch.worker_id,
                  launch.requirements.describe(), log_path)
        # Its own session: the terminal's Ctrl-C reaches the driver, not it.
        try:
            popen = subprocess.Popen(
                harness_command(), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except BaseException:
            log_file.close()
            raise
        assert popen.stdout is not None and popen.stderr is not None
        worker_id = launch.worker_id
        pumps = [OutputPump("%s-%s" % (worker_id, stream), pipe, log_file, stream,
                            prefix=functools.partial(self._prefix, stream, worker_id))
                 for stream, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr))]
        process = LocalProcess(worker_id, popen, log_path, log_file, pumps)
        process._own_group = True
        with self._lock:
            self._processes.append(process)
        return process

    def keep_logs(self) -> str:
        """Keep the workers' log folder after ``close()`` (call it when the job
        failed); returns the folder, which is also logged."""
        with self._lock:
            first, self._keep = not self._keep, True
        if first:
            _LOG.warning("Worker logs kept in %s", self._log_dir)
        return self._log_dir

    def close(self) -> None:
        with self._lock:
            self._closed = True
            keep = self._keep
        _OPEN.discard(self)
        if self._owns_dir and not keep:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def _close_at_exit(self) -> None:
        """At interpreter exit: kill what still runs, then close."""
        with self._lock:
            processes = list(self._processes)
            closed = self._closed
        if closed:
            return
        for process in processes:
            if process.is_alive():
                process.kill()
        self.close()


#: Placements not yet closed (weakly: a dropped one needs no cleanup of ours).
_OPEN: "weakref.WeakSet[LocalPlacement]" = weakref.WeakSet()


@atexit.register
def _close_open_placements() -> None:
    for placement in list(_OPEN):
        try:
            placement._close_at_exit()
        except Exception as exc:   # never fail interpreter exit
            _LOG.debug("closing placement %s at exit: %r", placement.log_dir, exc)
