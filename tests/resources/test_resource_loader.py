"""Driver loading: entry points, module:Class, and every failure mode."""
from __future__ import annotations

import pickle
from typing import Mapping

import pytest

from beam_gpu_runner.drivers.testing import TestingDriver, TestingDriverFactory
from beam_gpu_runner.resources.config import ResourceSpec
from beam_gpu_runner.resources.loader import (
    DriverLoadError,
    known_factories,
    load_driver,
    load_factory,
)


class TestingRaisingFactory:
    """A factory whose create_driver raises (Flink's failing-factory fake)."""
    __test__ = False


    def create_driver(self, params: Mapping[str, str]) -> object:
        raise RuntimeError("no FPGA here, params=%s" % dict(params))


class TestingBrokenConstructorFactory:
    __test__ = False

    def __init__(self) -> None:
        raise OSError("cannot open device registry")


class TestingNotAFactory:
    __test__ = False

    pass


class TestingBadDriverFactory:
    __test__ = False

    def create_driver(self, params: Mapping[str, str]) -> object:
        return object()


def test_entry_points_are_installed() -> None:
    known = known_factories()
    assert known["gpu"] == "beam_gpu_runner.drivers.gpu:GpuDriverFactory"
    assert known["testing"] == "beam_gpu_runner.drivers.testing:TestingDriverFactory"


def test_load_by_entry_point_and_by_module_class() -> None:
    assert isinstance(load_factory("gpu", "testing"), TestingDriverFactory)
    assert isinstance(load_factory(
        "gpu", "beam_gpu_runner.drivers.testing:TestingDriverFactory"), TestingDriverFactory)
    assert isinstance(load_factory(
        "gpu", "beam_gpu_runner.drivers.testing.TestingDriverFactory"), TestingDriverFactory)


def test_flink_class_name_is_an_alias_for_gpu() -> None:
    factory = load_factory("gpu", "org.apache.flink.externalresource.gpu.GPUDriverFactory")
    assert type(factory).__name__ == "GpuDriverFactory"


def test_driver_gets_only_its_params() -> None:
    driver = load_driver(ResourceSpec("gpu", "testing", param_items=(
        ("device-name", "Tesla T4"), ("num-devices", "3"))))
    assert isinstance(driver, TestingDriver)
    assert (driver.num_devices, driver.device_name) == (3, "Tesla T4")


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(DriverLoadError) as info:
        load_factory("gpu", "nvidia")
    text = str(info.value)
    for word in ("'gpu'", "driver-factory.class=nvidia", "known: gpu, testing"):
        assert word in text


def test_import_failure_names_module() -> None:
    with pytest.raises(DriverLoadError, match="importing module 'no_such_pkg_x'.*"
                                              "ModuleNotFoundError"):
        load_factory("fpga", "no_such_pkg_x:Factory")


def test_missing_attribute() -> None:
    with pytest.raises(DriverLoadError, match="has no attribute 'Nope'"):
        load_factory("fpga", "beam_gpu_runner.drivers.testing:Nope")


def test_factory_constructor_raising() -> None:
    with pytest.raises(DriverLoadError, match="OSError: cannot open device registry"):
        load_factory("fpga", "%s:TestingBrokenConstructorFactory" % __name__)


def test_not_a_factory() -> None:
    with pytest.raises(DriverLoadError, match="no create_driver"):
        load_factory("fpga", "%s:TestingNotAFactory" % __name__)


def test_factory_raising_in_create_driver() -> None:
    spec = ResourceSpec("fpga", "%s:TestingRaisingFactory" % __name__,
                        param_items=(("slot", "1"),))
    with pytest.raises(DriverLoadError) as info:
        load_driver(spec)
    text = str(info.value)
    assert "'fpga'" in text and "TestingRaisingFactory" in text
    assert "RuntimeError: no FPGA here" in text


def test_driver_without_retrieve() -> None:
    with pytest.raises(DriverLoadError, match="retrieve_resource_info"):
        load_driver(ResourceSpec("fpga", "%s:TestingBadDriverFactory" % __name__))


def test_bad_params_surface_as_load_error() -> None:
    with pytest.raises(DriverLoadError, match="num-devices.*'many'"):
        load_driver(ResourceSpec("gpu", "testing", param_items=(("num-devices", "many"),)))


def test_driver_load_error_pickles() -> None:
    with pytest.raises(DriverLoadError) as info:
        load_factory("gpu", "nvidia")
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is DriverLoadError and str(again) == str(info.value)
