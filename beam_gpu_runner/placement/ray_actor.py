"""The Ray actor that hosts one Beam SDK harness (the inside half of RayPlacement).

This module runs inside a Ray worker process. It must stay importable without
Ray (Ray is imported inside the methods that need it) and must not import the
driver side (``placement/ray.py``): the actor class is shipped to Ray by
reference, so every node needs ``beam_gpu_runner`` installed.

The actor reads the GPU ids Ray assigned to it (``ray.get_gpu_ids()``; Ray's ids
are the node's physical indexes), describes them as ``ResourceInfo`` (the
driver's description from the spec's device table when the placement started
this Ray with the runner's devices, else name and UUID from NVML when the node
has it, ``ray-gpu-<id>`` otherwise), and starts
``python -m beam_gpu_runner.placement.harness`` (Beam's SDK harness) as its child with that
resource environment. The harness is tied to the actor: it gets SIGKILL when
the actor process dies (Linux ``PR_SET_PDEATHSIG``), so a killed actor leaves
no orphan harness behind. The harness's stdout and stderr are forwarded line
by line to the actor's own (``process_info.OutputPump``), which Ray streams to
the driver with the actor's name, and kept in its log file.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from beam_gpu_runner.placement import harness
from beam_gpu_runner.placement.process_info import (  # noqa: F401 (re-exported)
    LogFile, OutputPump, describe_returncode, read_log_tail)
from beam_gpu_runner.resources.api import ResourceInfo
from beam_gpu_runner.resources.runtime_context import RuntimeContext

_LOG = logging.getLogger(__name__)

HARNESS_MODULE = harness.MODULE

# Runs the harness after asking the kernel to SIGKILL it when its parent (the
# actor process) dies. No preexec_fn: the Ray worker is multi-threaded.
# The getppid check closes the race where the parent died before prctl ran.
# PDEATHSIG survives exec, so the harness shows up in ps as the usual
# ``python -m beam_gpu_runner.placement.harness``.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "parent = int(sys.argv[1])\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != parent:\n"
    "    sys.exit(70)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


@dataclass(frozen=True)
class HarnessSpec:
    """What the actor needs to start one SDK harness (built by the driver)."""

    worker_id: str
    control_descriptor: str        # text-format ApiServiceDescriptor
    logging_descriptor: str        # text-format ApiServiceDescriptor
    pipeline_options_json: str
    gpu_count: float = 0.0
    env: Mapping[str, str] = field(default_factory=dict)
    #: argv to run instead of ``python -m sdk_worker_main`` (tests, wrappers);
    #: argv[0] must be an executable path.
    command: Optional[Sequence[str]] = None
    #: Ray GPU id -> the runner's driver's description of that device (index,
    #: uuid, name, ...), when RayPlacement started this Ray declaring them;
    #: empty when it joined a cluster (NVML on the node describes them then).
    devices: Mapping[str, ResourceInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class HarnessStarted:
    """What the actor reports back once the harness process exists."""

    worker_id: str
    node_id: str
    node_ip: str
    actor_pid: int
    harness_pid: int
    gpu_ids: tuple[str, ...]
    resource_env: Mapping[str, str]
    log_path: Optional[str] = None


def _nvml_lookup(gpu_id: str) -> Optional[tuple[str, str, str]]:
    """(index, uuid, name) of a GPU from NVML, or None without NVML or device."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any NVML failure means "no NVML here"
        return None
    try:
        if gpu_id.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(gpu_id))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(gpu_id.encode())
        index = str(pynvml.nvmlDeviceGetIndex(handle))
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        return (index,
                uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                name.decode() if isinstance(name, bytes) else str(name))
    except Exception as exc:  # noqa: BLE001
        _LOG.warning("ray_actor: NVML has no GPU %s (%s); using a placeholder name",
                     gpu_id, exc)
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def gpu_infos(gpu_ids: Sequence[str]) -> tuple[ResourceInfo, ...]:
    """ResourceInfo for each Ray-assigned GPU id (physical index or UUID)."""
    infos = []
    for gpu_id in gpu_ids:
        found = _nvml_lookup(gpu_id)
        if found is not None:
            index, uuid, name = found
        elif gpu_id.isdigit():
            index, uuid, name = gpu_id, "ray-gpu-%s" % gpu_id, "ray-gpu-%s" % gpu_id
        else:
            raise RuntimeError(
                "ray_actor: Ray assigned GPU id %r, which is not a physical index, "
                "and NVML cannot resolve it to one; start the Ray node with "
                "CUDA_VISIBLE_DEVICES set to indexes" % gpu_id)
        infos.append(ResourceInfo.of(index=index, uuid=uuid, name=name))
    return tuple(infos)


def harness_env(spec: HarnessSpec, resource_env: Mapping[str, str],
                base: Mapping[str, str]) -> dict[str, str]:
    """The harness environment: base < launch env < resources < Fn API keys."""
    env = dict(base)
    env.update(spec.env)
    env.update(resource_env)
    env["CONTROL_API_SERVICE_DESCRIPTOR"] = spec.control_descriptor
    env["LOGGING_API_SERVICE_DESCRIPTOR"] = spec.logging_descriptor
    env["PIPELINE_OPTIONS"] = spec.pipeline_options_json
    env["WORKER_ID"] = spec.worker_id
    return env


def device_infos(gpu_ids: Sequence[str],
                 table: Mapping[str, ResourceInfo]) -> tuple[ResourceInfo, ...]:
    """The devices behind Ray's GPU ids: from ``table`` when given, else NVML."""
    if not table:
        return gpu_infos(gpu_ids)
    missing = [gpu_id for gpu_id in gpu_ids if gpu_id not in table]
    if missing:
        raise RuntimeError(
            "ray_actor: Ray assigned GPU id(s) %s, which the runner's device table "
            "(Ray ids %s) does not have; the local Ray was started with other GPUs "
            "than RayPlacement declared (was CUDA_VISIBLE_DEVICES changed while it "
            "started?)" % (missing, sorted(table)))
    return tuple(table[gpu_id] for gpu_id in gpu_ids)


class HarnessActor:
    """Ray actor body: owns one SDK harness subprocess.

    Wrapped with ``ray.remote`` by ``RayPlacement``; plain class here so that it
    can be unit-tested without Ray. The harness's output goes to the actor's
    stdout/stderr (Ray shows it on the driver) and to
    ``<Ray session>/logs/beam-gpu-runner/<worker_id>.log`` on its node (kept
    with Ray's own logs); it runs in the actor's working directory (a
    ``runtime_env`` working_dir, if any) and gets a per-worker
    ``SEMI_PERSISTENT_DIRECTORY`` that ``stop``/``kill`` remove.
    """

    #: Seconds ``stop``/``kill`` wait for the harness's pipes to drain.
    DRAIN_S = 5.0

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._work_dir: Optional[str] = None
        self._log: Optional[LogFile] = None
        self._pumps: tuple[OutputPump, ...] = ()
        self.log_path: Optional[str] = None

    def start(self, spec: HarnessSpec) -> HarnessStarted:
        if self._proc is not None:
            raise RuntimeError("ray_actor.start: worker %s already started (pid %d)"
                               % (self.worker_id, self._proc.pid))
        import ray

        gpu_ids = tuple(str(g) for g in ray.get_gpu_ids()) if spec.gpu_count > 0 else ()
        context = RuntimeContext(
            self.worker_id, {"gpu": device_infos(gpu_ids, spec.devices)} if gpu_ids else {})
        resource_env = context.to_env()
        if not gpu_ids:
            # A CPU-only worker must not see (and grab) GPUs Ray gave to others.
            resource_env["CUDA_VISIBLE_DEVICES"] = ""
        env = harness_env(spec, resource_env, os.environ)
        self._work_dir = tempfile.mkdtemp(prefix="beam-gpu-runner-%s-" % _safe(self.worker_id))
        env.setdefault("SEMI_PERSISTENT_DIRECTORY", self._work_dir)
        self.log_path = os.path.join(_log_dir(self._work_dir), "%s.log" % _safe(self.worker_id))
        argv = list(spec.command) if spec.command else [
            sys.executable, "-m", HARNESS_MODULE]
        self._log = LogFile(self.log_path)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(os.getpid())] + argv,
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._pumps = tuple(
            OutputPump("%s-%s" % (self.worker_id, stream), pipe, self._log, stream)
            for stream, pipe in (("stdout", self._proc.stdout),
                                 ("stderr", self._proc.stderr)))
        _LOG.info("ray_actor: worker %s started harness pid %d with Ray GPU ids %s (%s), "
                  "log %s", self.worker_id, self._proc.pid, list(gpu_ids),
                  context.gpus(), self.log_path)
        runtime = ray.get_runtime_context()
        return HarnessStarted(
            worker_id=self.worker_id,
            node_id=runtime.get_node_id(),
            node_ip=str(ray.util.get_node_ip_address()),
            actor_pid=os.getpid(),
            harness_pid=self._proc.pid,
            gpu_ids=gpu_ids,
            resource_env=resource_env,
            log_path=self.log_path)

    def poll(self) -> Optional[int]:
        """The harness's return code, None while it runs (or before start)."""
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout: float) -> Optional[int]:
        """Wait up to ``timeout`` for the harness to end; its code or None."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 20) -> str:
        if self._proc is not None and self._proc.poll() is not None:
            self._drain(2.0)   # its last words may still be in the pipe
        return read_log_tail(self.log_path, lines)

    def _drain(self, timeout: float) -> None:
        for pump in self._pumps:
            pump.join(timeout)

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout``; returns the return code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _LOG.warning("ray_actor: worker %s harness pid %d ignored SIGTERM for "
                             "%.1fs; killing it", self.worker_id, proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._cleanup()
        return proc.returncode

    def kill(self) -> Optional[int]:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._cleanup()
        return proc.returncode

    def _cleanup(self) -> None:
        self._drain(self.DRAIN_S)
        if self._log is not None:
            self._log.close()
        if self._work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None


def _safe(worker_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)[:100] or "worker"


def _log_dir(fallback: str) -> str:
    """Ray's session log folder on this node (``ray logs`` finds files there)."""
    try:
        from ray._private import worker as ray_worker

        node = ray_worker._global_node
        if node is not None:
            path = os.path.join(node.get_logs_dir_path(), "beam-gpu-runner")
            os.makedirs(path, exist_ok=True)
            return path
    except Exception:  # noqa: BLE001 - a private API: fall back to the work dir
        _LOG.debug("ray_actor: no Ray session log folder", exc_info=True)
    return fallback
