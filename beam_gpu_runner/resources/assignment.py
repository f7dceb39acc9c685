"""Which devices each worker gets: discovery once, type filter, host-wide leases.

The worker pool makes one ``DeviceAllocator`` per job and, for each worker it
starts, calls ``acquire(stage, requirements, hint_text, worker_id)``; it starts
the worker with ``assignment.env()`` added to its environment and calls
``release(assignment)`` when the worker ends (``close()`` at job end releases
what is left). A request that cannot be met raises ``ResourceShortageError``;
a worker never gets an empty set of GPUs in place of the ones it asked for.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import psutil

from beam_gpu_runner.resources.api import (
    EnumeratingDriver,
    ExternalResourceDriver,
    ExternalResourceInfo,
    ResourceInfo,
)
from beam_gpu_runner.resources.config import (
    ConfigError,
    ExternalResourceConfig,
    ResourceSpec,
)
from beam_gpu_runner.resources.hints import accelerator_matches
from beam_gpu_runner.resources.leases import Candidate, LeaseOutcome, LeaseTable
from beam_gpu_runner.resources.loader import load_driver
from beam_gpu_runner.resources.requirements import StageRequirements
from beam_gpu_runner.resources.runtime_context import RuntimeContext

_LOG = logging.getLogger(__name__)

GPU_RESOURCE = "gpu"
#: How often a worker waiting for leased devices looks again.
_WAIT_POLL_S = 0.25
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"


class ResourceShortageError(RuntimeError):
    """A stage asked for devices this host cannot give (one message arg; pickles)."""


@dataclass(frozen=True)
class Assignment:
    """What one worker holds. ``env()`` is what to add to its environment."""

    worker_id: str
    stage_name: str
    resources: Mapping[str, tuple[ResourceInfo, ...]] = field(default_factory=dict)
    gpu_share: Optional[float] = None       # set for fractional hints (count < 1)
    lease_ids: tuple[str, ...] = ()
    hide_gpus: bool = False                  # a stage without a GPU hint sees none

    @property
    def gpus(self) -> tuple[ResourceInfo, ...]:
        return tuple(self.resources.get(GPU_RESOURCE, ()))

    def runtime_context(self) -> RuntimeContext:
        return RuntimeContext(worker_id=self.worker_id, resources=dict(self.resources))

    def env(self) -> dict[str, str]:
        env = self.runtime_context().to_env()
        if self.hide_gpus and not self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if self.gpu_share is not None:
            env[MEM_FRACTION_ENV] = "%.4g" % self.gpu_share
            env[PREALLOCATE_ENV] = "false"
        return env


def _as_resource_info(info: ExternalResourceInfo) -> ResourceInfo:
    if isinstance(info, ResourceInfo):
        return info
    return ResourceInfo.from_mapping(
        {k: v for k in info.keys() if (v := info.get_property(k)) is not None})


def _order(info: ResourceInfo) -> tuple[int, str]:
    index = info.get_property("index") or ""
    return (int(index) if index.isdigit() else 1 << 30, info.get_property("uuid") or "")


def device_key(resource: str, info: ResourceInfo) -> str:
    """The lease key of a device: its UUID, else ``resource:index``."""
    return info.get_property("uuid") or "%s:%s" % (resource, info.get_property("index"))


def discover(spec: ResourceSpec, driver: ExternalResourceDriver) -> tuple[ResourceInfo, ...]:
    """Ask ``driver`` for ``spec.amount`` resources, or all when no amount is set."""
    if spec.amount is None:
        if not isinstance(driver, EnumeratingDriver):
            raise ConfigError(
                "resource %r: driver %s cannot list all its resources; set %s"
                % (spec.name, spec.driver_factory, spec.key("amount")))
        infos: Sequence[ExternalResourceInfo] = driver.all_resource_info()
    else:
        infos = list(driver.retrieve_resource_info(spec.amount))
    return tuple(sorted((_as_resource_info(i) for i in infos), key=_order))


def _summary(infos: Sequence[ResourceInfo]) -> str:
    counts: dict[str, int] = {}
    for info in infos:
        name = info.get_property("name") or "unnamed"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join("%d x %s" % (n, name) for name, n in counts.items()) or "none"


class DiscoveredInventory:
    """The planner's ``DeviceInventory`` over what the drivers discovered."""

    def __init__(self, config: ExternalResourceConfig,
                 devices: Mapping[str, tuple[ResourceInfo, ...]]) -> None:
        self._config = config
        self._gpus = tuple(devices.get(GPU_RESOURCE, ()))

    def matching_devices(self, requirements: StageRequirements) -> int:
        return sum(1 for g in self._gpus if accelerator_matches(
            requirements.accelerator_type, g.get_property("name"),
            _int(g.get_property("memory-total"))))

    def describe_devices(self) -> str:
        spec = self._config.get(GPU_RESOURCE)
        if spec is None:
            return ("no %r resource is configured (external-resources=%s)"
                    % (GPU_RESOURCE, ";".join(self._config.names)))
        found = "driver %r found %d GPU(s) (%s)" % (spec.driver_factory, len(self._gpus),
                                                     _summary(self._gpus))
        if spec.driver_factory == "testing":   # fake devices: their name is configured
            found += ", named by %s" % spec.key("param.device-name")
        return found

    def more_devices_hint(self) -> str:
        spec = self._config.get(GPU_RESOURCE)
        if spec is None:
            return "external-resources=%s" % GPU_RESOURCE
        if spec.driver_factory == "testing":
            return spec.key("param.num-devices")
        if spec.amount is not None:
            return "%s (or a host with more GPUs)" % spec.key("amount")
        return "a host with more GPUs"


class DeviceAllocator:
    """Hands each worker its own devices; see the module docstring."""

    def __init__(self, config: ExternalResourceConfig, lease_dir: Optional[str] = None,
                 *, drivers: Optional[Mapping[str, ExternalResourceDriver]] = None,
                 wait_timeout: float = 0.0) -> None:
        """``wait_timeout``: how long ``acquire`` waits for devices that other
        holders lease (0: not at all; GpuRunner's ``--device_wait_timeout``)."""
        self.config = config
        self.wait_timeout = wait_timeout
        self._drivers = dict(drivers or {})
        self._lease_dir = lease_dir
        self._lock = threading.Lock()
        self._devices: Optional[dict[str, tuple[ResourceInfo, ...]]] = None
        self._leases: Optional[LeaseTable] = None
        self._held: dict[str, tuple[str, ...]] = {}   # worker_id -> lease ids

    # -- discovery -------------------------------------------------------------
    def devices(self) -> Mapping[str, tuple[ResourceInfo, ...]]:
        """Every configured resource's discovered devices (discovered once)."""
        with self._lock:
            if self._devices is None:
                found = {}
                for spec in self.config.resources:
                    driver = self._drivers.get(spec.name) or load_driver(spec)
                    found[spec.name] = discover(spec, driver)
                    _LOG.info("external resource %s: %d discovered (%s)", spec.name,
                              len(found[spec.name]), _summary(found[spec.name]))
                self._devices = found
            return self._devices

    def inventory(self) -> DiscoveredInventory:
        return DiscoveredInventory(self.config, self.devices())

    # The planner's DeviceInventory, over this host's discovered devices.
    def matching_devices(self, requirements: StageRequirements) -> int:
        return self.inventory().matching_devices(requirements)

    def describe_devices(self) -> str:
        return self.inventory().describe_devices()

    def more_devices_hint(self) -> str:
        return self.inventory().more_devices_hint()

    @property
    def lease_table(self) -> LeaseTable:
        with self._lock:
            if self._leases is None:
                self._leases = LeaseTable(self._lease_dir)
            return self._leases

    # -- assignment ------------------------------------------------------------
    def acquire(self, stage_name: str, requirements: StageRequirements,
                hint_text: Optional[str] = None, worker_id: str = "worker",
                job: str = "", should_stop: Callable[[], bool] = lambda: False
                ) -> Assignment:
        """Lease what ``requirements`` asks for, for worker ``worker_id`` of job
        ``job`` (its id, shown as the holder on the devices page).

        Devices that exist but are leased by others are waited for, up to
        ``wait_timeout`` seconds (as Flink waits for slots), logging once who
        holds them; ``should_stop()`` ends the wait early (the job ended).
        Raises ResourceShortageError when the host cannot give it: at once when
        it never could (too few matching devices), after the wait otherwise.
        """
        devices = self.devices()
        shared = {name: infos for name, infos in devices.items()
                  if name != GPU_RESOURCE and infos}
        self._check_host(stage_name, requirements)
        if not requirements.needs_gpu:
            return Assignment(worker_id, stage_name, shared, hide_gpus=True)
        spec = self.config.get(GPU_RESOURCE)
        if spec is None:
            raise ResourceShortageError(
                "stage %r asks for GPUs (accelerator hint %r) but no resource named %r "
                "is configured (external-resources=%s); add %s to external-resources"
                % (stage_name, hint_text, GPU_RESOURCE, ";".join(self.config.names),
                   GPU_RESOURCE))
        gpus = devices.get(GPU_RESOURCE, ())
        wanted = requirements.accelerator_type
        matching = [g for g in gpus if accelerator_matches(
            wanted, g.get_property("name"), _int(g.get_property("memory-total")))]
        need = requirements.whole_devices
        share = requirements.gpu_count if requirements.gpu_count < 1 else 1.0
        if len(matching) < need:
            raise ResourceShortageError(self._shortage(
                stage_name, requirements, hint_text, worker_id, spec, gpus, matching, None))
        candidates = [Candidate(device_key(GPU_RESOURCE, g), GPU_RESOURCE,
                                g.get_property("index") or "", g.get_property("name") or "")
                      for g in matching]
        holder = "%s/%s" % (stage_name, worker_id)
        deadline = time.monotonic() + self.wait_timeout
        announced = False
        while True:
            outcome = self.lease_table.acquire(candidates, need, share, holder=holder,
                                               job=job)
            if outcome.ok:
                break
            if time.monotonic() >= deadline or should_stop():
                raise ResourceShortageError(self._shortage(
                    stage_name, requirements, hint_text, worker_id, spec, gpus, matching,
                    outcome) + (" (waited %g s, --device_wait_timeout)"
                                % self.wait_timeout if self.wait_timeout else ""))
            if not announced:
                announced = True
                _LOG.warning(
                    "stage %s worker %s waits for %d GPU(s): the matching ones are leased "
                    "by %s; waiting up to %.0f s (--device_wait_timeout)", stage_name,
                    worker_id, need, self._holders(candidates), self.wait_timeout)
            time.sleep(_WAIT_POLL_S)
        if announced:
            _LOG.info("stage %s worker %s got its GPU(s) after waiting", stage_name,
                      worker_id)
        by_key = {device_key(GPU_RESOURCE, g): g for g in matching}
        held = [by_key[lease.device_key] for lease in outcome.leases]
        if share < 1.0:
            held = [ResourceInfo.from_mapping({**g.as_dict(), "share": "%.4g" % share})
                    for g in held]
        lease_ids = tuple(lease.lease_id for lease in outcome.leases)
        with self._lock:
            self._held[worker_id] = self._held.get(worker_id, ()) + lease_ids
        _LOG.info("stage %s worker %s: leased GPU(s) %s%s", stage_name, worker_id,
                  [g.get_property("index") for g in held],
                  " (share %g)" % share if share < 1.0 else "")
        return Assignment(worker_id, stage_name,
                          {**shared, GPU_RESOURCE: tuple(sorted(held, key=_order))},
                          gpu_share=share if share < 1.0 else None, lease_ids=lease_ids)

    def _holders(self, candidates: Sequence[Candidate]) -> str:
        keys = {c.device_key for c in candidates}
        holders = sorted({"job %s (pid %d, %s)" % (lease.job or "?", lease.pid, lease.holder)
                          for lease in self.lease_table.snapshot()
                          if lease.device_key in keys})
        return ", ".join(holders) or "other processes"

    def release(self, assignment: Assignment) -> None:
        if not assignment.lease_ids:
            return
        self.lease_table.release(assignment.lease_ids)
        with self._lock:
            left = tuple(i for i in self._held.get(assignment.worker_id, ())
                         if i not in assignment.lease_ids)
            if left:
                self._held[assignment.worker_id] = left
            else:
                self._held.pop(assignment.worker_id, None)

    def close(self) -> None:
        """Release every lease this allocator still holds."""
        with self._lock:
            ids = [i for ids in self._held.values() for i in ids]
            self._held.clear()
            table = self._leases
        if table is not None:
            table.release(ids)
            table.close()

    def __enter__(self) -> "DeviceAllocator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages --------------------------------------------------------------
    @staticmethod
    def _check_host(stage_name: str, req: StageRequirements) -> None:
        total = psutil.virtual_memory().total
        if req.min_ram_bytes and req.min_ram_bytes > total:
            _LOG.warning("stage %s: min_ram hint %d bytes exceeds this host's %d bytes; "
                         "running anyway", stage_name, req.min_ram_bytes, total)

    def _shortage(self, stage: str, req: StageRequirements, hint_text: Optional[str],
                  worker_id: str, spec: ResourceSpec, gpus: Sequence[ResourceInfo],
                  matching: Sequence[ResourceInfo],
                  outcome: Optional[LeaseOutcome]) -> str:
        what = ("a %g share of one GPU" % req.gpu_count if req.gpu_count < 1
                else "%d GPU(s)" % req.whole_devices)
        if req.accelerator_type:
            what += " of type %s" % req.accelerator_type
        head = ("stage %r (accelerator hint %r) needs %s for worker %s, but "
                % (stage, hint_text, what, worker_id))
        found = "driver %r found %d GPU(s) (%s)" % (spec.driver_factory, len(gpus),
                                                    _summary(gpus))
        if spec.driver_factory == "testing":
            more = spec.key("param.num-devices")
        else:
            more = "%s (or a host with more GPUs)" % spec.key("amount") \
                if spec.amount is not None else "a host with more GPUs"
        if not gpus:
            return head + found + "; configure devices with %s, or drop the hint" % more
        if len(matching) < req.whole_devices:
            fix = ("change the hint's type or count" if not matching else
                   "lower the hint's count or configure %s" % more)
            if req.accelerator_type and spec.driver_factory == "testing":
                fix += ", or set %s to a matching name" % spec.key("param.device-name")
            return head + found + ", of which %d match the type; %s" % (len(matching), fix)
        assert outcome is not None
        usage = dict(outcome.usage)
        free = sum(1 for g in matching if usage.get(device_key(GPU_RESOURCE, g), 0) == 0)
        leased = len(matching) - free
        return head + found + (
            "; of the %d matching, %d are free and %d are leased (by this job's other "
            "workers or other processes on this host; leases in %s); lower --num_workers "
            "or the hint's count, wait for other jobs, or configure %s"
            % (len(matching), free, leased, self.lease_table.path, more))


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.isdigit() else None


__all__ = ["Assignment", "DeviceAllocator", "ResourceShortageError", "discover",
           "device_key"]
