"""Ray placement: each worker is a Ray actor hosting one Beam SDK harness.

Ray assigns the devices (``assigns_devices = True``): a stage's requirements
become the actor's ``num_gpus`` (fractional too), ``accelerator_type``,
``num_cpus`` and ``memory``; stages with two or more GPUs reserve them in a
STRICT_PACK placement group so that they are on one node. Inside the actor
(``ray_actor.HarnessActor``) the harness gets the GPUs Ray chose through the
runtime context environment (``BEAM_GPU_RUNNER_RESOURCES``,
``CUDA_DEVICE_ORDER``, ``CUDA_VISIBLE_DEVICES``).

Ray is imported lazily: the rest of the runner works without the ``[ray]``
extra, and constructing a ``RayPlacement`` does not connect to anything until
the first call that needs the cluster.

A ``RayPlacement`` given ``local_gpus`` (the runner passes the devices its
drivers report) that starts its own Ray (no address, no Ray in the process, no
``RAY_ADDRESS``, no ``ray start`` cluster on this host) declares those devices
as the node's GPUs (``LocalRayGpus``): ``num_gpus``, an
``accelerator_type:<label>`` resource per device type (Ray's own label for
the device's name), and Ray GPU ids equal to the devices' indexes. Its actors
then describe the device Ray gave them with the driver's properties, so a
pipeline tested locally with the testing driver's fake GPUs runs the same on a
local Ray. Joining a cluster declares nothing: its nodes say what they have.

A request the cluster can never satisfy fails at once (unless
``fail_fast_infeasible=False``, for autoscaling clusters); one that does not
start within ``start_timeout`` seconds fails then. Both errors name the worker,
the requirements, what was asked of Ray and what the cluster has.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from beam_gpu_runner.placement.api import WorkerLaunch
from beam_gpu_runner.placement.ray_actor import (
    HarnessActor, HarnessSpec, HarnessStarted, describe_returncode)
from beam_gpu_runner.resources.api import ResourceInfo
from beam_gpu_runner.resources.hints import accelerator_matches, is_vendor_only
from beam_gpu_runner.resources.requirements import StageRequirements
from beam_gpu_runner.resources.runtime_context import visible_id

_LOG = logging.getLogger(__name__)

#: Beam accelerator type strings whose Ray label is not the generic mapping.
#: Ray labels nodes from the NVML name ("NVIDIA A100-SXM4-80GB" -> "A100");
#: size-specific labels such as "A100-80G" are never added automatically.
BEAM_TO_RAY_ACCELERATOR: Mapping[str, str] = {
    "nvidia-tesla-a100": "A100",
    "nvidia-a100-80gb": "A100",
    "nvidia-h100-80gb": "H100",
    "nvidia-h100-mega-80gb": "H100",
    "nvidia-rtx-pro-6000": "RTX-PRO-6000",
}

_ACCELERATOR_PREFIX = "accelerator_type:"
_KEPT_LOG_LINES = 200


class RayPlacementError(RuntimeError):
    """A worker could not be placed on Ray (infeasible, timed out, died early)."""

    def __init__(self, message: str, worker_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.worker_id = worker_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.worker_id))


def ray_available() -> bool:
    """True when the ``[ray]`` extra is installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def ray_accelerator_type(beam_type: str,
                         overrides: Optional[Mapping[str, str]] = None) -> str:
    """Map a Beam accelerator type ("nvidia-h100") to Ray's label ("H100").

    Order: ``overrides``, then ``BEAM_TO_RAY_ACCELERATOR``, then a name that
    already is one of Ray's labels (``ray.util.accelerators``, e.g. "H100" or
    "AMD-Instinct-MI300X-OAM"), then the generic rule: drop "nvidia-" and
    "tesla-", drop a memory suffix ("-80gb"), upper-case ("nvidia-l40s" ->
    "L40S"). Never raises: a label no node has is reported when placing.
    """
    key = beam_type.strip()
    if not key:
        raise ValueError("ray_accelerator_type: empty accelerator type")
    for table in (overrides or {}, BEAM_TO_RAY_ACCELERATOR):
        if key in table:
            return table[key]
        if key.lower() in table:
            return table[key.lower()]
    if key in _known_ray_labels():
        return key
    name = key.lower()
    name = re.sub(r"^nvidia[-_ ]", "", name)
    name = re.sub(r"^tesla[-_ ]", "", name)
    name = re.sub(r"-(mega-)?\d+gb$", "", name)
    return name.upper()


def _known_ray_labels() -> frozenset[str]:
    try:
        from ray.util.accelerators import accelerators
    except ImportError:
        return frozenset()
    return frozenset(
        value for name, value in vars(accelerators).items()
        if re.match(r"^[A-Z][A-Za-z0-9_]*$", name) and isinstance(value, str))


#: Ray's rule for labelling a node from the NVML name of its GPU
#: (``ray._private.accelerators.nvidia_gpu``: "NVIDIA H100 80GB HBM3" -> "H100",
#: "Tesla V100-SXM2-16GB" -> "V100", else the name without "NVIDIA " and with
#: dashes: "NVIDIA GeForce RTX 5090" -> "GeForce-RTX-5090"). Used when Ray's
#: own (private) function cannot be imported; a test checks the two agree.
_RAY_GPU_NAME = re.compile(r"\w+\s+((?:[A-Z]+\s+)*[A-Z0-9]*\d[A-Z0-9]*)")


def ray_device_label(name: str) -> Optional[str]:
    """Ray's accelerator label for a GPU called ``name``, as Ray labels a node
    that has it ("NVIDIA H100 80GB HBM3" -> "H100"); None for an empty name.

    ``ray_accelerator_type`` maps Beam hints onto the same labels
    ("nvidia-h100" -> "H100"), so a hinted stage lands where its device is.
    """
    if not name.strip():
        return None
    try:
        from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
        label = NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(name)
        return str(label) if label else None
    except (ImportError, AttributeError):
        pass
    match = _RAY_GPU_NAME.match(name)
    result = match.group(1).replace(" ", "-") if match else None
    if result and len(result) > 1:
        return result
    cleaned = re.sub(r"^NVIDIA\s+", "", name).strip()
    return cleaned.replace(" ", "-") if cleaned else None


@dataclass(frozen=True)
class LocalRayGpus:
    """The GPUs a Ray that ``RayPlacement`` starts itself declares.

    ``devices`` are the runner's (``DeviceAllocator(config).devices()["gpu"]``:
    real GPUs from the ``gpu`` driver or the ``testing`` driver's fakes), in
    the order of Ray's GPU ids; ``labels`` the ``accelerator_type`` labels the
    node gets. Ray numbers a node's GPUs by the ``CUDA_VISIBLE_DEVICES`` it
    starts with, which ``RayPlacement`` sets to ``ray_ids`` (each device's
    index, or a MIG instance's UUID) while Ray starts, so Ray's ids are the
    devices' own, as on a cluster node.
    """

    devices: tuple[ResourceInfo, ...]
    labels: tuple[str, ...]

    @classmethod
    def of(cls, devices: Sequence[ResourceInfo],
           overrides: Optional[Mapping[str, str]] = None) -> "LocalRayGpus":
        """Declare ``devices``: Ray's label for each device's name, plus each
        ``overrides`` label (Beam type -> Ray label) whose type the device is."""
        labels: list[str] = []
        ids: list[str] = []
        for device in devices:
            ray_id = visible_id(device)
            if not ray_id:
                raise RayPlacementError(
                    "RayPlacement: cannot declare GPU %r to a local Ray: it has no "
                    "'index' property (Ray numbers GPUs by index); fix the GPU driver's "
                    "external-resource.gpu.* settings, or start Ray yourself and pass "
                    "--ray_address" % (device,))
            if ray_id in ids:
                raise RayPlacementError(
                    "RayPlacement: cannot declare GPUs to a local Ray: two devices have "
                    "index %s (%s); each device needs its own index" % (
                        ray_id, [d for d in devices if visible_id(d) == ray_id]))
            ids.append(ray_id)
            name = device.get_property("name") or ""
            found = [ray_device_label(name)] + [
                label for beam_type, label in sorted((overrides or {}).items())
                if not is_vendor_only(beam_type) and accelerator_matches(
                    beam_type, name, _whole(device.get_property("memory-total")))]
            labels.extend(label for label in found if label and label not in labels)
        kinds = sorted({ray_device_label(d.get_property("name") or "") or "unnamed"
                        for d in devices})
        if len(kinds) > 1:
            _LOG.warning("RayPlacement: the local Ray gets GPUs of %d types %s on one "
                         "node; Ray cannot tell them apart, so a stage hinted for one "
                         "type may get a device of another (its runtime context names "
                         "the device it got)", len(kinds), kinds)
        return cls(tuple(devices), tuple(labels))

    @property
    def ray_ids(self) -> tuple[str, ...]:
        return tuple(visible_id(device) for device in self.devices)

    def table(self) -> dict[str, ResourceInfo]:
        """Ray GPU id -> the driver's description of that device (for the actors)."""
        return dict(zip(self.ray_ids, self.devices))

    def init_kwargs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``ray.init`` arguments declaring the devices, merged with ``given``'s
        ``resources`` (which win for a label both name)."""
        resources = {_ACCELERATOR_PREFIX + label: 1.0 for label in self.labels}
        resources.update(given.get("resources") or {})
        kwargs: dict[str, Any] = {"num_gpus": len(self.devices)}
        if resources:
            kwargs["resources"] = resources
        return kwargs

    def describe(self) -> str:
        if not self.devices:
            return "no GPUs (the runner's drivers report none)"
        return "%d GPU(s) [%s], accelerator types %s" % (
            len(self.devices), "; ".join(
                "Ray id %s = %s (%s)" % (ray_id, d.get_property("uuid") or "no uuid",
                                         d.get_property("name") or "unnamed")
                for ray_id, d in zip(self.ray_ids, self.devices)),
            list(self.labels) or "none")


def _whole(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.isdigit() else None


@contextlib.contextmanager
def _visible_while_starting(ray_ids: Sequence[str]) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES=ray_ids`` in this process while ``ray.init``
    starts its node (the raylet and its workers inherit it, and Ray numbers
    the node's GPUs by it); the previous value is restored afterwards."""
    key = "CUDA_VISIBLE_DEVICES"
    before = os.environ.get(key)
    os.environ[key] = ",".join(ray_ids)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@dataclass(frozen=True)
class RayRequest:
    """What one worker asks of Ray, derived from ``StageRequirements``."""

    num_gpus: float
    #: A stage's cpu_count reserves cores; otherwise ``default_num_cpus`` (0:
    #: idle pooled harnesses must not starve other stages' workers of CPUs;
    #: Ray's own default would hold 1 CPU per GPU actor). None: Ray's default.
    num_cpus: Optional[float]
    memory: Optional[int]
    accelerator_type: Optional[str]     # Ray's label, e.g. "H100"

    @property
    def uses_placement_group(self) -> bool:
        return self.num_gpus >= 2

    def resources(self) -> dict[str, float]:
        """Ray resource names and amounts (as in ``ray.cluster_resources()``)."""
        res: dict[str, float] = {}
        if self.num_cpus:
            res["CPU"] = self.num_cpus
        if self.num_gpus > 0:
            res["GPU"] = self.num_gpus
        if self.memory:
            res["memory"] = float(self.memory)
        if self.accelerator_type:
            res[_ACCELERATOR_PREFIX + self.accelerator_type] = 0.001
        return res

    def describe(self) -> str:
        return "num_gpus=%g, num_cpus=%s, memory=%s, accelerator_type=%s%s" % (
            self.num_gpus,
            "default" if self.num_cpus is None else "%g" % self.num_cpus,
            self.memory, self.accelerator_type,
            ", STRICT_PACK placement group" if self.uses_placement_group else "")

    @classmethod
    def of(cls, requirements: StageRequirements, default_num_cpus: Optional[float],
           accelerator_overrides: Optional[Mapping[str, str]] = None) -> "RayRequest":
        gpus = requirements.gpu_count
        if gpus < 0 or math.isnan(gpus):
            raise ValueError("RayRequest: gpu_count must be >= 0, got %r" % gpus)
        # Ray only takes fractions below one; count:1.5 means two devices.
        num_gpus = float(requirements.whole_devices) if gpus >= 1 else float(gpus)
        return cls(
            num_gpus=num_gpus,
            num_cpus=(float(requirements.cpu_count) if requirements.cpu_count is not None
                      else None if default_num_cpus is None else float(default_num_cpus)),
            memory=requirements.min_ram_bytes or None,
            accelerator_type=(
                ray_accelerator_type(requirements.accelerator_type, accelerator_overrides)
                if requirements.accelerator_type and gpus > 0
                and not is_vendor_only(requirements.accelerator_type) else None))


def _descriptor(address: str) -> str:
    from apache_beam.portability.api import endpoints_pb2
    from google.protobuf import text_format

    return str(text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=address)))


class RayWorkerProcess:
    """Driver-side handle of one worker actor (implements ``WorkerProcess``)."""

    def __init__(self, placement: "RayPlacement", launch: WorkerLaunch,
                 request: RayRequest, actor: Any, placement_group: Any,
                 started: HarnessStarted) -> None:
        self.worker_id = launch.worker_id
        self.requirements = launch.requirements
        self.request = request
        self.started = started
        self._placement = placement
        self._actor = actor
        self._placement_group = placement_group
        self._lock = threading.Lock()
        self._final: Optional[str] = None   # set once the worker has ended
        self._returncode: Optional[int] = None
        self._log_tail: Optional[str] = None

    # Where it runs, for logs and tests.
    @property
    def node_id(self) -> str:
        return self.started.node_id

    @property
    def node_ip(self) -> str:
        return self.started.node_ip

    @property
    def gpu_ids(self) -> tuple[str, ...]:
        return self.started.gpu_ids

    @property
    def harness_pid(self) -> int:
        return self.started.harness_pid

    @property
    def actor_pid(self) -> int:
        return self.started.actor_pid

    def _call(self, method: str, *args: Any, timeout: float) -> Any:
        import ray

        return ray.get(getattr(self._actor, method).remote(*args), timeout=timeout)

    def _status(self, wait: float = 0.0) -> Optional[str]:
        """None while running, else the description of how it ended.

        ``wait`` > 0 waits that long (inside the actor) for the harness to end.
        """
        with self._lock:
            if self._final is not None:
                return self._final
        import ray.exceptions as rex

        timeout = wait + self._placement.call_timeout
        try:
            code = (self._call("wait", wait, timeout=timeout) if wait > 0
                    else self._call("poll", timeout=timeout))
        except rex.GetTimeoutError:
            # A busy or partitioned node; Ray declares the actor dead if the
            # node is really gone, and we report that on a later call.
            _LOG.warning("RayWorkerProcess: worker %s did not answer within %.1fs; "
                         "assuming it still runs", self.worker_id, timeout)
            return None
        except rex.ActorUnavailableError as exc:
            _LOG.warning("RayWorkerProcess: worker %s is temporarily unavailable: %s",
                         self.worker_id, exc)
            return None
        except rex.RayActorError as exc:
            return self._finish("actor died: %s" % _first_line(exc), None)
        if code is None:
            return None
        # Keep the end of its log before the actor (and its GPUs) go.
        self._remember_log()
        return self._finish("harness %s" % describe_returncode(code), code)

    def _remember_log(self) -> None:
        import ray.exceptions as rex

        try:
            tail = self._call("log_tail", _KEPT_LOG_LINES,
                              timeout=self._placement.call_timeout)
        except (rex.RayError, rex.GetTimeoutError):
            return
        with self._lock:
            self._log_tail = str(tail)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait up to ``timeout`` s for the worker to end (as ``Popen.wait``,
        but returns None on timeout); -1 when only the actor is known dead."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 5.0 if end is None else max(0.0, end - time.monotonic())
            final = self._status(wait=min(left, 5.0))
            if final is not None:
                return self._returncode
            if end is not None and time.monotonic() >= end:
                return None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the harness's output (kept after it ended)."""
        with self._lock:
            kept, final = self._log_tail, self._final
        if kept is not None:
            return "".join(kept.splitlines(keepends=True)[-lines:])
        if final is not None:
            return "(log on node %s: %s)" % (self.node_ip, self.started.log_path)
        import ray.exceptions as rex

        try:
            return str(self._call("log_tail", lines, timeout=self._placement.call_timeout))
        except (rex.RayError, rex.GetTimeoutError):
            return ""

    def _finish(self, description: str, returncode: Optional[int]) -> str:
        """Record how it ended (first call wins), then free the actor."""
        with self._lock:
            if self._final is None:
                self._final = "%s (worker %s on node %s)" % (
                    description, self.worker_id, self.node_ip)
                # Unknown codes read as SIGKILL: that is what PDEATHSIG does
                # to a harness whose actor died.
                self._returncode = -signal.SIGKILL if returncode is None else returncode
                _LOG.info("RayWorkerProcess: %s", self._final)
            final = self._final
        self._release()
        return final

    def is_alive(self) -> bool:
        return self._status() is None

    def exit_description(self) -> str:
        return self._status() or "running"

    def stop(self, timeout: float = 5.0) -> None:
        self._end("stop", timeout, timeout + self._placement.call_timeout)

    def kill(self) -> None:
        self._end("kill", None, self._placement.call_timeout)

    def _end(self, method: str, arg: Optional[float], call_timeout: float) -> None:
        with self._lock:
            done = self._final is not None
        if done:
            self._release()
            return
        import ray.exceptions as rex

        verb = "stopped" if method == "stop" else "killed"
        code: Optional[int] = None
        try:
            args = () if arg is None else (arg,)
            code = self._call(method, *args, timeout=call_timeout)
            description = "%s, harness %s" % (verb, describe_returncode(code))
        except (rex.RayError, rex.GetTimeoutError) as exc:
            description = "%s (actor did not answer: %s)" % (verb, _first_line(exc))
        self._finish(description, code)

    def _release(self) -> None:
        """Kill the actor and free its placement group (idempotent)."""
        self._placement._release(self)

    def __repr__(self) -> str:
        return "RayWorkerProcess(%s, node=%s, gpus=%s, pid=%d)" % (
            self.worker_id, self.node_ip, list(self.gpu_ids), self.harness_pid)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RayPlacement:
    """Workers as Ray actors; Ray assigns their GPUs (implements ``Placement``).

    ``address``: as ``ray.init(address=...)`` ("auto", "HOST:PORT", "ray://...";
    None starts a local Ray, or joins ``RAY_ADDRESS``). When Ray is already
    initialised in this process it is used as is and left running by ``close``.

    ``local_gpus``: returns the devices the runner's drivers report (e.g.
    ``lambda: DeviceAllocator(config).devices()["gpu"]``); called only when
    this placement starts its own Ray, which then declares them
    (``LocalRayGpus``). Without it a started Ray detects GPUs itself.
    """

    name = "ray"
    assigns_devices = True

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        start_timeout: float = 60.0,
        call_timeout: float = 10.0,
        default_num_cpus: Optional[float] = 0.0,
        fail_fast_infeasible: bool = True,
        accelerator_types: Optional[Mapping[str, str]] = None,
        runtime_env: Optional[Mapping[str, Any]] = None,
        init_kwargs: Optional[Mapping[str, Any]] = None,
        harness_command: Optional[Sequence[str]] = None,
        local_gpus: Optional[Callable[[], Sequence[ResourceInfo]]] = None,
    ) -> None:
        if start_timeout <= 0:
            raise ValueError("RayPlacement: start_timeout must be > 0, got %r"
                             % start_timeout)
        self.address = address
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.default_num_cpus = default_num_cpus
        self.fail_fast_infeasible = fail_fast_infeasible
        self.accelerator_types = dict(accelerator_types or {})
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self.init_kwargs = dict(init_kwargs or {})
        self.harness_command = tuple(harness_command) if harness_command else None
        self.local_gpus = local_gpus
        #: What this placement declared to the Ray it started (None otherwise).
        self.declared: Optional[LocalRayGpus] = None
        self._lock = threading.RLock()
        self._connected = False
        self._owns_ray = False
        self._closed = False
        self._actor_class: Any = None
        self._workers: dict[int, RayWorkerProcess] = {}   # id(handle) -> handle

    # -- connection -------------------------------------------------------

    def _ensure_connected(self) -> None:
        with self._lock:
            if self._closed:
                raise RayPlacementError("RayPlacement: used after close()")
            if self._connected:
                return
            try:
                import ray
            except ImportError as exc:
                raise RayPlacementError(
                    "RayPlacement: --placement=ray needs Ray; install the extra: "
                    "pip install 'beam-gpu-runner[ray]' (%s)" % exc) from exc
            if ray.is_initialized():
                _LOG.info("RayPlacement: using the Ray connection this process already has")
            else:
                started = time.monotonic()
                declared = self._declaration()
                address = self.address
                if declared is None:
                    ray.init(address=address, **self.init_kwargs)
                else:
                    address = "local"
                    kwargs = dict(self.init_kwargs, **declared.init_kwargs(self.init_kwargs))
                    _LOG.info("RayPlacement: starting a local Ray that declares the "
                              "runner's devices: %s", declared.describe())
                    with _visible_while_starting(declared.ray_ids):
                        # "local": start one, as Ray does for address=None when
                        # _declaration found nothing to join.
                        ray.init(address="local", **kwargs)
                    self.declared = declared
                self._owns_ray = True
                _LOG.info("RayPlacement: ray.init(address=%s) took %.1fs; cluster has %s",
                          address, time.monotonic() - started,
                          _format_resources(ray.cluster_resources()))
            self._actor_class = ray.remote(max_restarts=0, max_task_retries=0)(HarnessActor)
            self._connected = True

    def _declaration(self) -> Optional[LocalRayGpus]:
        """The runner's devices to declare, when ``ray.init`` would start a
        local Ray (None: it would join a cluster, or nothing to declare)."""
        if self.local_gpus is None or self.address is not None:
            return None
        if "num_gpus" in self.init_kwargs:
            _LOG.info("RayPlacement: init_kwargs set num_gpus=%s; not declaring the "
                      "runner's devices", self.init_kwargs["num_gpus"])
            return None
        try:
            # Ray's own decision for address=None: RAY_ADDRESS, or the cluster
            # the last `ray start` on this host recorded; None: start a new one.
            from ray._private.services import canonicalize_bootstrap_address
            joins = canonicalize_bootstrap_address(
                None, self.init_kwargs.get("_temp_dir"))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - a private API; ray.init decides then
            _LOG.warning("RayPlacement: cannot tell whether ray.init() would start a "
                         "local Ray or join one (%s: %s); not declaring the runner's "
                         "devices", type(exc).__name__, exc)
            return None
        if joins is not None:
            _LOG.info("RayPlacement: joining the Ray cluster at %s (RAY_ADDRESS or "
                      "`ray start`); its nodes declare their own GPUs", joins)
            return None
        return LocalRayGpus.of(tuple(self.local_gpus()), self.accelerator_types)

    def advertise_host(self) -> str:
        """The driver's node IP (never "localhost"): workers may be on other nodes."""
        self._ensure_connected()
        import ray.util

        return str(ray.util.get_node_ip_address())

    def matching_devices(self, requirements: StageRequirements) -> int:
        """GPUs in the cluster a worker with ``requirements`` could use
        (all GPUs, or those labelled with its accelerator type)."""
        self._ensure_connected()
        import ray

        resources = ray.cluster_resources()
        total = int(resources.get("GPU", 0))
        request = RayRequest.of(requirements, self.default_num_cpus, self.accelerator_types)
        if request.accelerator_type is None:
            return total
        label = _ACCELERATOR_PREFIX + request.accelerator_type
        # Ray counts a label as 1 per node that has it, not per GPU.
        nodes = [n for n in ray.nodes() if n.get("Alive") and label in n.get("Resources", {})]
        return sum(int(n["Resources"].get("GPU", 0)) for n in nodes)

    def describe_devices(self) -> str:
        """The cluster's GPUs, for the planner's messages."""
        self._ensure_connected()
        import ray

        return "the Ray cluster has %s" % _format_resources(ray.cluster_resources())

    def more_devices_hint(self) -> str:
        return "more GPU nodes in the Ray cluster"

    # -- workers ----------------------------------------------------------

    def start_worker(self, launch: WorkerLaunch) -> RayWorkerProcess:
        self._ensure_connected()
        import ray
        import ray.exceptions as rex
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        request = RayRequest.of(launch.requirements, self.default_num_cpus,
                                self.accelerator_types)
        if self.fail_fast_infeasible:
            self._check_feasible(launch, request)
        deadline = time.monotonic() + self.start_timeout
        started_at = time.monotonic()
        pg: Any = None
        actor: Any = None
        try:
            options: dict[str, Any] = {"num_gpus": request.num_gpus}
            if request.num_cpus is not None:
                options["num_cpus"] = request.num_cpus
            if request.memory:
                options["memory"] = request.memory
            if self.runtime_env:
                options["runtime_env"] = self.runtime_env
            if request.uses_placement_group:
                pg = placement_group([request.resources()], strategy="STRICT_PACK",
                                     name="beam-gpu-runner:%s" % launch.worker_id)
                try:
                    ray.get(pg.ready(), timeout=max(0.0, deadline - time.monotonic()))
                except rex.GetTimeoutError:
                    raise self._error(launch, request, "its placement group was not "
                                      "ready within %gs" % self.start_timeout) from None
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=0)
                # Inside the bundle the actor asks only for what the bundle holds.
                options["num_cpus"] = request.num_cpus or 0
            elif request.accelerator_type:
                options["accelerator_type"] = request.accelerator_type
            actor = self._actor_class.options(**options).remote(launch.worker_id)
            spec = HarnessSpec(
                worker_id=launch.worker_id,
                control_descriptor=_descriptor(launch.control_address),
                logging_descriptor=_descriptor(launch.logging_address),
                pipeline_options_json=launch.pipeline_options_json,
                gpu_count=request.num_gpus,
                env=dict(launch.env),
                command=self.harness_command,
                devices=self.declared.table() if self.declared else {})
            try:
                started: HarnessStarted = ray.get(
                    actor.start.remote(spec),
                    timeout=max(0.0, deadline - time.monotonic()))
            except rex.GetTimeoutError:
                raise self._error(launch, request, "its actor did not start within %gs"
                                  % self.start_timeout) from None
            except rex.RayActorError as exc:
                raise self._error(launch, request, "its actor died while starting: %s"
                                  % _first_line(exc)) from exc
            except rex.RayTaskError as exc:
                raise self._error(launch, request, "its actor failed to start the "
                                  "harness: %s" % _first_line(exc)) from exc
            except rex.RayError as exc:   # runtime_env setup and the like
                raise self._error(launch, request, "Ray could not create its actor: "
                                  "%s: %s" % (type(exc).__name__, _first_line(exc))) from exc
        except BaseException:
            if actor is not None:
                _kill_quietly(actor)
            if pg is not None:
                try:
                    remove_placement_group(pg)
                except Exception:  # noqa: BLE001
                    _LOG.debug("RayPlacement: removing placement group failed",
                               exc_info=True)
            raise
        handle = RayWorkerProcess(self, launch, request, actor, pg, started)
        with self._lock:
            self._workers[id(handle)] = handle
            closed = self._closed
        if closed:   # close() ran while we were starting
            handle.kill()
            raise RayPlacementError("RayPlacement.start_worker: worker %s started after "
                                    "close()" % launch.worker_id, launch.worker_id)
        _LOG.info("RayPlacement: worker %s (%s) started in %.1fs on node %s, GPUs %s, "
                  "harness pid %d", launch.worker_id, request.describe(),
                  time.monotonic() - started_at, started.node_ip,
                  list(started.gpu_ids), started.harness_pid)
        return handle

    def _check_feasible(self, launch: WorkerLaunch, request: RayRequest) -> None:
        """Fail now when no alive node could ever hold the request."""
        import ray

        wanted = request.resources()
        for node in ray.nodes():
            if not node.get("Alive", node.get("alive", False)):
                continue
            have = node.get("Resources", {})
            if all(have.get(key, 0.0) + 1e-9 >= amount for key, amount in wanted.items()):
                return
        raise self._error(launch, request, "no node of the cluster can ever satisfy it "
                          "(needs %s on one node; per node: %s)" % (
                              _format_resources(wanted), self._nodes_summary()))

    def _nodes_summary(self) -> str:
        import ray

        parts = []
        for node in ray.nodes():
            if node.get("Alive", node.get("alive", False)):
                parts.append("%s {%s}" % (node.get("NodeManagerAddress", "?"),
                                          _format_resources(node.get("Resources", {}))))
        return "; ".join(parts) or "no alive nodes"

    def _error(self, launch: WorkerLaunch, request: RayRequest,
               why: str) -> RayPlacementError:
        import ray

        try:
            total = _format_resources(ray.cluster_resources())
            free = _format_resources(ray.available_resources())
            accelerators = sorted(
                key[len(_ACCELERATOR_PREFIX):] for key in ray.cluster_resources()
                if key.startswith(_ACCELERATOR_PREFIX) and "_group_" not in key)
        except Exception as exc:  # noqa: BLE001 - the error must still be raised
            total = free = "unknown (%s)" % exc
            accelerators = []
        local = ""
        if self.declared is not None:
            local = ("; this is a local Ray started with the devices the runner's drivers "
                     "report (%s): configure more or other devices with "
                     "--external_resource external-resource.gpu.* (the testing driver "
                     "fakes them), or join a cluster with --ray_address"
                     % self.declared.describe())
        return RayPlacementError(
            "RayPlacement.start_worker: cannot place worker %s with requirements %s "
            "(asked Ray for %s): %s. Cluster has %s; available now %s; accelerator "
            "types %s%s" % (launch.worker_id, launch.requirements.describe(),
                            request.describe(), why, total, free,
                            accelerators or "none labelled", local),
            launch.worker_id)

    def workers(self) -> list[RayWorkerProcess]:
        """Workers started here and not yet known to have ended."""
        with self._lock:
            return list(self._workers.values())

    def _release(self, handle: RayWorkerProcess) -> None:
        with self._lock:
            self._workers.pop(id(handle), None)
        _kill_quietly(handle._actor)
        if handle._placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(handle._placement_group)
            except Exception:  # noqa: BLE001
                _LOG.debug("RayPlacement: removing placement group of %s failed",
                           handle.worker_id, exc_info=True)
            handle._placement_group = None

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker (SIGTERM, SIGKILL after ``timeout``), kill their
        actors and placement groups; ``ray.shutdown()`` if ``ray.init`` was ours."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handles = list(self._workers.values())
            connected = self._connected
        if not connected:
            return
        import ray

        if handles:
            refs = [h._actor.stop.remote(timeout) for h in handles]
            ray.wait(refs, num_returns=len(refs), timeout=timeout + self.call_timeout)
            for handle in handles:
                handle._finish("stopped by close()", None)
        if self._owns_ray:
            ray.shutdown()
            _LOG.info("RayPlacement: ray.shutdown() done")

    def __enter__(self) -> "RayPlacement":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_quietly(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead, or Ray gone
        _LOG.debug("RayPlacement: ray.kill failed", exc_info=True)


def _format_resources(resources: Mapping[str, float]) -> str:
    shown = []
    for key in sorted(resources):
        if (key.startswith("node:") or key.endswith("object_store_memory")
                or "_group_" in key):   # placement group bookkeeping resources
            continue
        value = resources[key]
        if key == "memory":
            shown.append("memory=%.1fGiB" % (value / 2**30))
        else:
            shown.append("%s=%g" % (key, value))
    return ", ".join(shown) or "nothing"
