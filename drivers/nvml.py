"""The small seam between the GPU driver and NVML, and its fake.

``PynvmlNvml`` talks to the real library through pynvml; ``TestingNvml`` returns
fixed devices (or fails like a host without a driver) so tests need no GPU.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

_LOG = logging.getLogger(__name__)


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (pynvml missing, no driver, init failed)."""


@dataclass(frozen=True)
class NvmlDevice:
    """One CUDA-usable device: a whole GPU, or a MIG instance of one.

    ``index`` is NVML's index, which is PCI bus order. For a MIG instance it is
    the parent GPU's index, ``uuid`` is the ``MIG-...`` UUID and
    ``parent_uuid`` / ``mig_index`` say where it lives.
    """

    index: int
    uuid: str
    name: str
    memory_total: Optional[int] = None
    pci_bus_id: Optional[str] = None
    mig_index: Optional[int] = None
    parent_uuid: Optional[str] = None

    @property
    def is_mig(self) -> bool:
        return self.mig_index is not None

    def properties(self) -> dict[str, str]:
        props = {"index": str(self.index), "uuid": self.uuid, "name": self.name}
        if self.memory_total is not None:
            props["memory-total"] = str(self.memory_total)
        if self.pci_bus_id:
            props["pci-bus-id"] = self.pci_bus_id
        if self.mig_index is not None:
            props["mig-index"] = str(self.mig_index)
            props["parent-index"] = str(self.index)
        if self.parent_uuid:
            props["parent-uuid"] = self.parent_uuid
        return props


class Nvml(Protocol):
    def devices(self) -> list[NvmlDevice]:
        """All devices in index order; raises NvmlUnavailable when NVML cannot run."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PynvmlNvml:
    """NVML through pynvml (nvidia-ml-py). Imported lazily."""

    def devices(self) -> list[NvmlDevice]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # pynvml's deprecation notice
                import pynvml
        except ImportError as exc:
            raise NvmlUnavailable("pynvml is not installed (%s)" % exc) from None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise NvmlUnavailable("nvmlInit failed: %s" % exc) from None
        try:
            return self._list(pynvml)
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable("NVML query failed: %s" % exc) from None
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:  # pragma: no cover - shutdown failures are harmless
                pass

    @staticmethod
    def _list(nvml: Any) -> list[NvmlDevice]:
        out: list[NvmlDevice] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
            try:
                bus: Optional[str] = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
            except nvml.NVMLError:
                bus = None
            migs = PynvmlNvml._migs(nvml, handle, index, uuid)
            if migs:
                out.extend(migs)
                continue
            out.append(NvmlDevice(
                index=index, uuid=uuid, name=name,
                memory_total=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                pci_bus_id=bus))
        return out

    @staticmethod
    def _migs(nvml: Any, handle: Any, index: int, parent_uuid: str) -> list[NvmlDevice]:
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:   # not MIG-capable
            return []
        if current != nvml.NVML_DEVICE_MIG_ENABLE:
            return []
        migs = []
        for mig_index in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig_index)
            except nvml.NVMLError:   # empty slot
                continue
            migs.append(NvmlDevice(
                index=index, uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                name=_text(nvml.nvmlDeviceGetName(mig)),
                memory_total=int(nvml.nvmlDeviceGetMemoryInfo(mig).total),
                mig_index=mig_index, parent_uuid=parent_uuid))
        return migs


class TestingNvml:
    """A fake NVML: fixed devices, or ``error`` to behave like a host without one."""
    __test__ = False  # not a pytest test class


    def __init__(self, devices: Sequence[NvmlDevice] = (),
                 error: Optional[str] = None) -> None:
        self._devices = list(devices)
        self._error = error
        self.calls = 0

    def devices(self) -> list[NvmlDevice]:
        self.calls += 1
        if self._error is not None:
            raise NvmlUnavailable(self._error)
        return list(self._devices)


def discover(nvml: Nvml) -> list[NvmlDevice]:
    """NVML's devices, or none (INFO log) when NVML is unavailable."""
    try:
        found = nvml.devices()
    except NvmlUnavailable as exc:
        _LOG.info("GPU discovery: NVML unavailable (%s); using no GPUs", exc)
        return []
    _LOG.debug("GPU discovery: NVML found %d device(s)", len(found))
    return found
