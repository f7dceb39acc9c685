"""The default placement: each worker is a subprocess on this host."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import IO, Optional

from google.protobuf import text_format

from apache_beam.portability.api import endpoints_pb2

from beam_gpu_runner.placement import harness
from beam_gpu_runner.placement.api import WorkerLaunch
from beam_gpu_runner.placement.process_info import describe_returncode, read_log_tail

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


class LocalProcess:
    """A worker subprocess; its output goes to a log file whose tail we keep."""

    def __init__(self, worker_id: str, popen: "subprocess.Popen[bytes]", log_path: str,
                 log_file: IO[bytes]) -> None:
        self.worker_id = worker_id
        self.pid = popen.pid
        self.log_path = log_path
        self._popen = popen
        self._log_file = log_file
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
        return read_log_tail(self.log_path, lines)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._popen.poll() is None:
                self._popen.terminate()
                try:
                    self._popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    _LOG.warning("Worker %s did not stop in %.1fs; killing it",
                                 self.worker_id, timeout)
                    self._popen.kill()
                    self._popen.wait()
            self._log_file.close()

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()


class LocalPlacement:
    name = "local"
    assigns_devices = False

    def __init__(self, log_dir: Optional[str] = None) -> None:
        """Worker logs go to ``log_dir``; by default a temp folder removed on close."""
        self._owns_dir = log_dir is None
        self._log_dir = log_dir or tempfile.mkdtemp(prefix="beam-gpu-runner-workers-")
        os.makedirs(self._log_dir, exist_ok=True)

    def advertise_host(self) -> str:
        return "localhost"

    def start_worker(self, launch: WorkerLaunch) -> LocalProcess:
        log_path = os.path.join(self._log_dir, "%s.log" % launch.worker_id)
        log_file = open(log_path, "ab")
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
        popen = subprocess.Popen(
            harness_command(), env=env, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT)
        return LocalProcess(launch.worker_id, popen, log_path, log_file)

    def close(self) -> None:
        if self._owns_dir:
            shutil.rmtree(self._log_dir, ignore_errors=True)
