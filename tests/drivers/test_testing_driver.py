"""The testing driver fakes GPUs deterministically."""
from __future__ import annotations

import pytest

from beam_gpu_runner.drivers.testing import (
    DEFAULT_DEVICE_NAME,
    TestingDriverFactory,
    fake_uuid,
)
from beam_gpu_runner.resources.api import DiscoveryError, EnumeratingDriver, ResourceInfo
from beam_gpu_runner.resources.config import ConfigError


def test_fakes_devices_with_properties() -> None:
    driver = TestingDriverFactory().create_driver({"num-devices": "3",
                                                   "memory-bytes": "1024"})
    assert isinstance(driver, EnumeratingDriver)
    infos = driver.all_resource_info()
    assert [i.get_property("index") for i in infos] == ["0", "1", "2"]
    assert infos[2].get_property("uuid") == fake_uuid(2)
    assert (infos[2].get_property("uuid") or "").startswith("GPU-testing-")
    assert infos[0].get_property("name") == DEFAULT_DEVICE_NAME
    assert infos[0].get_property("memory-total") == "1024"
    assert all(isinstance(i, ResourceInfo) for i in infos)


def test_deterministic_across_drivers() -> None:
    a = TestingDriverFactory().create_driver({"num-devices": "2"}).all_resource_info()
    b = TestingDriverFactory().create_driver({"num-devices": "2"}).all_resource_info()
    assert a == b


def test_defaults_and_name() -> None:
    driver = TestingDriverFactory().create_driver({"device-name": "Tesla T4"})
    (info,) = driver.retrieve_resource_info(1)
    assert info.get_property("name") == "Tesla T4"
    assert info.get_property("memory-total") is None


def test_zero_devices_is_allowed() -> None:
    assert TestingDriverFactory().create_driver({"num-devices": "0"}).all_resource_info() == []


@pytest.mark.parametrize("params, match", [
    ({"num-devices": "x"}, "num-devices='x'"),
    ({"num-devices": "-1"}, "num-devices='-1'"),
    ({"memory-bytes": "0"}, "memory-bytes='0'"),
    ({"device-name": " "}, "device-name is empty"),
])
def test_bad_params(params: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TestingDriverFactory().create_driver(params)


def test_retrieve_more_than_faked() -> None:
    driver = TestingDriverFactory().create_driver({"num-devices": "2"})
    with pytest.raises(DiscoveryError, match="asked for 3.*fakes 2"):
        driver.retrieve_resource_info(3)
