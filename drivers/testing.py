"""A driver that fakes GPUs, for tests and laptops without hardware.

Params (``external-resource.<name>.param.*``):

``num-devices``   how many fake devices (whole number >= 0, default 1)
``device-name``   their name (default ``NVIDIA H100 80GB HBM3``)
``memory-bytes``  their memory (optional)

Each device has ``index``, a deterministic ``uuid`` (``GPU-testing-0000-...``),
``name`` and, when given, ``memory-total``::

    --external_resource external-resource.gpu.driver-factory.class=testing
    --external_resource external-resource.gpu.param.num-devices=4
"""
from __future__ import annotations

from typing import Mapping, Optional

from beam_gpu_runner.resources.api import (
    DiscoveryError,
    ExternalResourceInfo,
    ResourceInfo,
)
from beam_gpu_runner.resources.config import ConfigError

DEFAULT_DEVICE_NAME = "NVIDIA H100 80GB HBM3"
_KEY = "external-resource.<name>.param."


def fake_uuid(index: int) -> str:
    """The fake UUID of testing device ``index`` (stable across processes)."""
    return "GPU-testing-0000-0000-0000-%012d" % index


def _whole(params: Mapping[str, str], key: str, default: Optional[int],
           minimum: int) -> Optional[int]:
    raw = params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError("testing driver: %s%s=%r must be a whole number >= %d, e.g. "
                          "%s%s=4" % (_KEY, key, raw, minimum, _KEY, key))
    return value


class TestingDriver:
    __test__ = False  # not a pytest test class

    def __init__(self, num_devices: int, device_name: str = DEFAULT_DEVICE_NAME,
                 memory_bytes: Optional[int] = None) -> None:
        self.num_devices = num_devices
        self.device_name = device_name
        self.memory_bytes = memory_bytes

    def __repr__(self) -> str:
        return "TestingDriver(num_devices=%d, device_name=%r)" % (
            self.num_devices, self.device_name)

    def _info(self, index: int) -> ResourceInfo:
        props: dict[str, object] = {
            "index": index, "uuid": fake_uuid(index), "name": self.device_name}
        if self.memory_bytes is not None:
            props["memory-total"] = self.memory_bytes
        return ResourceInfo.from_mapping(props)

    def all_resource_info(self) -> list[ExternalResourceInfo]:
        return [self._info(i) for i in range(self.num_devices)]

    def retrieve_resource_info(self, amount: int) -> set[ExternalResourceInfo]:
        if amount < 1 or amount > self.num_devices:
            raise DiscoveryError(
                "testing driver: asked for %d device(s) but it fakes %d; set "
                "%snum-devices >= %d or lower the amount" % (
                    amount, self.num_devices, _KEY, amount))
        return {self._info(i) for i in range(amount)}


class TestingDriverFactory:
    """Entry point ``testing``."""
    __test__ = False  # not a pytest test class


    def create_driver(self, params: Mapping[str, str]) -> TestingDriver:
        num = _whole(params, "num-devices", 1, 0)
        memory = _whole(params, "memory-bytes", None, 1)
        assert num is not None
        name = params.get("device-name", DEFAULT_DEVICE_NAME).strip()
        if not name:
            raise ConfigError("testing driver: %sdevice-name is empty; give a name such "
                              "as %r" % (_KEY, DEFAULT_DEVICE_NAME))
        return TestingDriver(num, name, memory)
