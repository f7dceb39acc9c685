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

A worker without devices whose job ended cleanly is parked in
``placement/warm.py``'s reserve for ``keep_alive_s`` and reused by the next
job that would start one with the same environment (see there).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from typing import IO, Callable, Mapping, Optional, Protocol, Sequence

from google.protobuf import text_format

from apache_beam.portability.api import endpoints_pb2

from beam_gpu_runner.placement import harness
from beam_gpu_runner.placement.api import WorkerLaunch
from beam_gpu_runner.placement.process_info import (
    LogFile, OutputPump, describe_returncode, read_log_tail)
from beam_gpu_runner.placement.warm import WARM, WarmProcesses

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


#: Variables an interpreter reads when it starts (the import path, the
#: loader, the allocator, device and math libraries): a parked worker is
#: reused only by a job whose worker would get the same values. Every other
#: variable is replaced by the next job's when it is reused.
STARTUP_ENV_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_",
                        "TPU_", "XLA_", "JAX_", "TF_", "GRPC_", "OMP_", "MKL_",
                        "OPENBLAS_")


def reuse_key(command: Sequence[str], env: Mapping[str, str]) -> str:
    """What must be equal for a parked worker to serve a job."""
    fixed = sorted((k, v) for k, v in env.items() if k.startswith(STARTUP_ENV_PREFIXES))
    return hashlib.sha256(json.dumps([list(command), fixed]).encode()).hexdigest()


def job_env_line(env: Mapping[str, str]) -> bytes:
    """The line a parked worker reads to serve the job ``env`` is for."""
    return (json.dumps({"env": dict(env)}) + "\n").encode()


class _Closable(Protocol):
    def close(self) -> None: ...


#: Seconds to wait for a worker's pipes to drain once it exited.
_DRAIN_S = 5.0


class LocalProcess:
    """A worker subprocess; its output goes to a log file whose tail we keep
    (and, through ``pumps``, to the driver's console)."""

    def __init__(self, worker_id: str, popen: "subprocess.Popen[bytes]", log_path: str,
                 log_file: _Closable, pumps: Sequence[OutputPump] = (),
                 reuse: Optional["_Reuse"] = None) -> None:
        self.worker_id = worker_id
        self.pid = popen.pid
        self.log_path = log_path
        self._popen = popen
        self._log_file = log_file
        self._pumps = tuple(pumps)
        self._own_group = False
        self._lock = threading.Lock()
        #: set for a worker that can serve later jobs (placement/warm.py)
        self.reuse = reuse
        #: the console prefix of each stream's lines (set by the placement)
        self.prefix: Callable[[str], bytes] = lambda stream: b""

    def line_prefix(self, stream: str) -> bytes:
        return self.prefix(stream)

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

    def await_idle(self, timeout: float) -> bool:
        """After its job's goodbye: whether the worker said it can serve
        another job within ``timeout``."""
        return self.reuse is not None and self.reuse.await_idle(timeout)

    def resume(self, worker_id: str, env: Mapping[str, str], log_path: str) -> None:
        """Serve another job: its log file, its worker id, its variables."""
        assert self.reuse is not None, "resume: worker %s is not reusable" % self.worker_id
        if isinstance(self._log_file, LogFile):
            self._log_file.reopen(log_path)
        self.log_path = log_path
        self.worker_id = worker_id
        self.reuse.send(job_env_line(env))

    def retire(self) -> None:
        """End an idle worker: end of its stdin makes it exit by itself."""
        if self.reuse is not None:
            self.reuse.close()
            self.wait(_RETIRE_S)
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        if self.reuse is not None:
            self.reuse.close()
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


#: Seconds a retired idle worker gets to exit by itself.
_RETIRE_S = 2.0

#: Seconds a worker gets to say it is idle after its job's goodbye.
_IDLE_S = 3.0


class _Reuse:
    """A reusable worker's two pipes: its stdin (the next job's variables)
    and the descriptor it writes "idle" to when its job said goodbye."""

    def __init__(self, key: str, commands: IO[bytes], status_fd: int) -> None:
        self.key = key
        self._commands: Optional[IO[bytes]] = commands
        self._status_fd: Optional[int] = status_fd
        self._lock = threading.Lock()

    def await_idle(self, timeout: float) -> bool:
        with self._lock:
            fd = self._status_fd
            if fd is None:
                return False
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return False
            try:
                said = os.read(fd, len(harness.IDLE))
            except OSError:
                return False
            return said == harness.IDLE

    def send(self, line: bytes) -> None:
        with self._lock:
            if self._commands is None:
                raise RuntimeError("resume: the worker's stdin is closed")
            self._commands.write(line)
            self._commands.flush()

    def close(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, None
            fd, self._status_fd = self._status_fd, None
        if commands is not None:
            with contextlib.suppress(OSError):
                commands.close()
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class LocalPlacement:
    name = "local"
    assigns_devices = False

    def __init__(self, log_dir: Optional[str] = None,
                 prefixed: Sequence[str] = ("stderr",), keep_alive_s: float = 0.0,
                 warm: WarmProcesses = WARM) -> None:
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
        #: how long a worker of a job that ended cleanly waits for the next job
        self._keep_alive_s = keep_alive_s
        self._warm = warm
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

    def _prefix(self, stream: str, *, worker_id: str) -> bytes:
        if stream not in self._prefixed or len(self._processes) < 2:
            return b""
        return ("(%s) " % worker_id).encode("utf-8", "replace")

    def start_worker(self, launch: WorkerLaunch) -> LocalProcess:
        log_path = os.path.join(self._log_dir, "%s.log" % launch.worker_id)
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
        command = harness_command()
        # Workers with devices are never parked (warm.py says why).
        key = (reuse_key(command, env)
               if self._keep_alive_s > 0 and not launch.requirements.needs_gpu else None)
        process = self._reuse(key, launch, env, log_path) if key else None
        if process is None:
            process = self._start(launch, command, env, log_path, key)
        process.prefix = functools.partial(self._prefix, worker_id=launch.worker_id)
        with self._lock:
            self._processes.append(process)
        return process

    def _reuse(self, key: str, launch: WorkerLaunch, env: Mapping[str, str],
               log_path: str) -> Optional[LocalProcess]:
        process = self._warm.take(key)
        if process is None:
            return None
        assert isinstance(process, LocalProcess)
        _LOG.info("Reusing idle worker process %d as worker %s (%s), log %s",
                  process.pid, launch.worker_id, launch.requirements.describe(), log_path)
        try:
            process.resume(launch.worker_id, env, log_path)
        except (OSError, RuntimeError, ValueError) as exc:   # it died meanwhile
            _LOG.info("Idle worker process %d could not be reused (%r); starting a new "
                      "one", process.pid, exc)
            process.kill()
            return None
        return process

    def _start(self, launch: WorkerLaunch, command: list[str], env: dict[str, str],
               log_path: str, key: Optional[str]) -> LocalProcess:
        log_file = LogFile(log_path)
        # A reusable worker writes "idle" into this pipe (read end, write end).
        status = os.pipe() if key else None
        if status is not None:
            env[harness.REUSE_FD_ENV] = str(status[1])
        _LOG.info("Starting worker %s (%s), log %s", launch.worker_id,
                  launch.requirements.describe(), log_path)
        # Its own session: the terminal's Ctrl-C reaches the driver, not it.
        try:
            popen = subprocess.Popen(
                command, env=env, stdin=subprocess.PIPE if status else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                pass_fds=status[1:] if status else ())
        except BaseException:
            log_file.close()
            if status is not None:
                os.close(status[0])
            raise
        finally:
            if status is not None:
                os.close(status[1])   # the worker holds its own copy
        assert popen.stdout is not None and popen.stderr is not None
        reuse = None
        if key and status is not None:
            assert popen.stdin is not None
            reuse = _Reuse(key, popen.stdin, status[0])
        process = LocalProcess(launch.worker_id, popen, log_path, log_file, reuse=reuse)
        process._pumps = tuple(
            OutputPump("%s-%s" % (launch.worker_id, stream), pipe, log_file, stream,
                       prefix=functools.partial(process.line_prefix, stream))
            for stream, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)))
        process._own_group = True
        return process

    def park(self, process: object) -> bool:
        """Keep a worker whose job said goodbye for the next job (False: it
        was not kept, and the caller ends it)."""
        if not isinstance(process, LocalProcess) or process.reuse is None \
                or not process.await_idle(_IDLE_S):
            return False
        if not self._warm.park(process.reuse.key, process, self._keep_alive_s):
            return False
        with self._lock:
            if process in self._processes:
                self._processes.remove(process)
        return True

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
