"""The devices page's data: every device the configured drivers report, who
holds it (the host-wide lease table) and, for real GPUs, NVML readings.

    devices = LocalDevices(config, lease_dir)      # discovery happens once, lazily
    devices.statuses(jobs)                          # -> list[DeviceStatus]
    devices.close()                                 # stops the NVML sampler

A device leased by several holders (fractional hints) appears once per holder;
a leased device the drivers did not report (another job's own configuration)
is listed from its lease. The testing driver's devices (UUIDs ``GPU-testing-``)
are marked fake and never sampled; NVML is sampled in the background (every
``sample_interval_s``, the last ``history_s`` kept) only when real GPUs exist.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Deque, Mapping, Optional, Protocol, Sequence

from beam_gpu_runner.resources.api import ResourceInfo
from beam_gpu_runner.resources.assignment import DeviceAllocator, device_key
from beam_gpu_runner.resources.config import ExternalResourceConfig
from beam_gpu_runner.resources.leases import Lease, LeaseTable
from beam_gpu_runner.status import DeviceStatus, JobStatus

_LOG = logging.getLogger(__name__)

FAKE_UUID_PREFIX = "GPU-testing-"
_TERMINAL = ("DONE", "FAILED", "CANCELLED", "DRAINED", "UPDATED")


@dataclass(frozen=True)
class Reading:
    """One NVML reading of one device (None: not readable, e.g. MIG utilisation)."""

    time: float
    utilization_percent: Optional[float] = None
    memory_used_bytes: Optional[int] = None
    memory_total_bytes: Optional[int] = None


class GpuReader(Protocol):
    def read(self, uuids: Sequence[str]) -> dict[str, Reading]:
        """A reading per UUID it could read (missing: unreadable)."""

    def close(self) -> None:
        """Release the library."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PynvmlReader:
    """Readings through pynvml (imported lazily; initialised once)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: dict[str, Any] = {}

    def _lib(self) -> Any:
        if self._nvml is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # pynvml's deprecation notice
                import pynvml
            pynvml.nvmlInit()
            self._nvml = pynvml
        return self._nvml

    def read(self, uuids: Sequence[str]) -> dict[str, Reading]:
        nvml = self._lib()
        now = time.time()
        out: dict[str, Reading] = {}
        for uuid in uuids:
            try:
                handle = self._handles.get(uuid)
                if handle is None:
                    handle = self._handles[uuid] = nvml.nvmlDeviceGetHandleByUUID(uuid)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    util: Optional[float] = float(
                        nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except nvml.NVMLError:   # MIG instances have no utilisation
                    util = None
                out[uuid] = Reading(now, util, int(memory.used), int(memory.total))
            except nvml.NVMLError as exc:
                _LOG.debug("NVML reading of %s failed: %s", uuid, exc)
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:   # shutdown failures are harmless
                pass
            self._nvml = None
            self._handles.clear()


class Sampler:
    """Reads ``uuids`` every ``interval_s`` on a daemon thread; keeps the
    readings of the last ``history_s`` per device."""

    def __init__(self, reader: GpuReader, uuids: Sequence[str], interval_s: float = 1.0,
                 history_s: float = 300.0) -> None:
        self._reader = reader
        self._uuids = list(uuids)
        self._interval_s = interval_s
        keep = max(2, int(history_s / interval_s) + 1)
        self._history: dict[str, Deque[Reading]] = {
            u: collections.deque(maxlen=keep) for u in self._uuids}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
        self._failed = False

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def sample_once(self) -> None:
        try:
            readings = self._reader.read(self._uuids)
        except Exception as exc:   # NVML vanished or cannot start: stop sampling
            if not self._failed:
                _LOG.warning("GPU utilisation sampling stopped: NVML failed (%s); the "
                             "devices page shows no utilisation", exc)
            self._failed = True
            self._stop.set()
            return
        with self._lock:
            for uuid, reading in readings.items():
                if uuid in self._history:
                    self._history[uuid].append(reading)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self._interval_s)
        self._reader.close()

    def history(self, uuid: str) -> tuple[Reading, ...]:
        with self._lock:
            return tuple(self._history.get(uuid, ()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def is_fake(uuid: str) -> bool:
    return uuid.startswith(FAKE_UUID_PREFIX)


def split_holder(holder: str) -> tuple[Optional[str], Optional[str]]:
    """``"<stage>/<worker id>"`` -> (stage, worker); stage labels may hold '/'."""
    if not holder:
        return None, None
    stage, sep, worker = holder.rpartition("/")
    if not sep:
        return None, holder
    return stage or None, worker or None


def holding_job(lease: Lease, jobs: Sequence[JobStatus]) -> Optional[str]:
    """The job holding ``lease``: its own ``job`` field, else the one running
    job whose workers and stages match the holder (None when not exactly one)."""
    if lease.job:
        return lease.job
    stage, worker = split_holder(lease.holder)
    found = []
    for job in jobs:
        if job.state in _TERMINAL:
            continue
        workers = {w.worker_id for w in job.workers}
        stages = {s.name for s in job.stages} | {s.label for s in job.stages}
        if worker in workers and (stage is None or stage in stages):
            found.append(job.job_id)
    return found[0] if len(found) == 1 else None


class LocalDevices:
    """Devices of this host's configured drivers, with their lease holders."""

    def __init__(self, config: ExternalResourceConfig, lease_dir: Optional[str] = None, *,
                 allocator: Optional[DeviceAllocator] = None,
                 reader_factory: Callable[[], GpuReader] = PynvmlReader,
                 sample_interval_s: float = 1.0, history_s: float = 300.0,
                 cache_s: float = 0.5) -> None:
        self._allocator = allocator or DeviceAllocator(config, lease_dir)
        self._lease_dir = lease_dir
        self._reader_factory = reader_factory
        self._sample_interval_s = sample_interval_s
        self._history_s = history_s
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._devices: Optional[Mapping[str, tuple[ResourceInfo, ...]]] = None
        self._leases: Optional[LeaseTable] = None
        self._sampler: Optional[Sampler] = None
        self._cached: Optional[tuple[float, list[DeviceStatus]]] = None
        self._closed = False

    def _discover(self) -> Mapping[str, tuple[ResourceInfo, ...]]:
        with self._lock:
            if self._devices is not None:
                return self._devices
        try:
            devices = self._allocator.devices()
        except Exception as exc:   # ConfigError, DriverLoadError, DiscoveryError
            _LOG.warning("devices page: the configured drivers could not list devices "
                         "(%s); showing leased devices only", exc)
            devices = {}
        real = [device_key(name, info) for name, infos in devices.items()
                for info in infos if not is_fake(device_key(name, info))]
        with self._lock:
            if self._devices is None:
                self._devices = devices
                if real and not self._closed:
                    self._sampler = Sampler(self._reader_factory(), real,
                                            self._sample_interval_s,
                                            self._history_s).start()
                    _LOG.info("sampling NVML utilisation of %d GPU(s) every %.1f s",
                              len(real), self._sample_interval_s)
            return self._devices

    def _lease_snapshot(self) -> list[Lease]:
        with self._lock:
            if self._leases is None:
                self._leases = LeaseTable(self._lease_dir)
            table = self._leases
        try:
            return table.snapshot()
        except Exception as exc:   # LeaseError: unreadable file
            _LOG.warning("devices page: reading leases failed: %s", exc)
            return []

    def statuses(self, jobs: Sequence[JobStatus] = ()) -> list[DeviceStatus]:
        now = time.monotonic()
        with self._lock:
            cached = self._cached
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        result = self._build(jobs)
        with self._lock:
            self._cached = (now, result)
        return result

    def _build(self, jobs: Sequence[JobStatus]) -> list[DeviceStatus]:
        devices = self._discover()
        leases = self._lease_snapshot()
        by_key: dict[str, list[Lease]] = {}
        for lease in leases:
            by_key.setdefault(lease.device_key, []).append(lease)
        out: list[DeviceStatus] = []
        seen: set[str] = set()
        for resource, infos in devices.items():
            for info in infos:
                key = device_key(resource, info)
                seen.add(key)
                out.extend(self._rows(resource, info.get_property("index") or "", key,
                                      info.get_property("name") or "",
                                      by_key.get(key, []), jobs,
                                      _int(info.get_property("memory-total"))))
        for key, held in sorted(by_key.items()):
            if key not in seen:
                first = held[0]
                out.extend(self._rows(first.resource or "gpu", first.index, key,
                                      first.name, held, jobs, None))
        return out

    def _rows(self, resource: str, index: str, uuid: str, name: str,
              leases: Sequence[Lease], jobs: Sequence[JobStatus],
              memory_total: Optional[int]) -> list[DeviceStatus]:
        fake = is_fake(uuid)
        history: tuple[Reading, ...] = ()
        sampler = self._sampler
        if not fake and sampler is not None:
            history = sampler.history(uuid)
        last = history[-1] if history else None
        base = DeviceStatus(
            resource=resource, index=index, uuid=uuid, name=name, fake=fake,
            utilization_percent=last.utilization_percent if last else None,
            memory_used_bytes=last.memory_used_bytes if last else None,
            memory_total_bytes=(last.memory_total_bytes if last and
                                last.memory_total_bytes is not None else memory_total),
            samples=tuple((r.time, r.utilization_percent, r.memory_used_bytes)
                          for r in history))
        if not leases:
            return [base]
        rows = []
        for lease in sorted(leases, key=lambda lease: lease.holder):
            stage, worker = split_holder(lease.holder)
            rows.append(dataclasses.replace(base, holder_job=holding_job(lease, jobs),
                                 holder_worker=worker, holder_stage=stage,
                                 share=lease.share if lease.share < 1.0 else None))
        return rows

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.isdigit() else None


__all__ = ["FAKE_UUID_PREFIX", "GpuReader", "LocalDevices", "PynvmlReader", "Reading",
           "Sampler", "holding_job", "is_fake", "split_holder"]
