"""DeviceAllocator: type filter, leases, env, shortage messages."""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Mapping

import pytest

from beam_gpu_runner.drivers.gpu import GpuDriver
from beam_gpu_runner.drivers.nvml import NvmlDevice, TestingNvml
from beam_gpu_runner.resources.api import ResourceInfo
from beam_gpu_runner.resources.assignment import (
    Assignment,
    DeviceAllocator,
    ResourceShortageError,
)
from beam_gpu_runner.resources.config import ConfigError, ResourceSpec, load_config
from beam_gpu_runner.resources.requirements import StageRequirements
from beam_gpu_runner.resources.runtime_context import RESOURCES_ENV, from_env

ONE = StageRequirements(gpu_count=1, accelerator_type="nvidia-h100")


def allocator(tmp_path: Path, *overrides: str, num: int = 4) -> DeviceAllocator:
    config = load_config(None, [
        "external-resource.gpu.driver-factory.class=testing",
        "external-resource.gpu.param.num-devices=%d" % num, *overrides])
    return DeviceAllocator(config, str(tmp_path))


def test_worker_env_carries_its_gpu(tmp_path: Path) -> None:
    with allocator(tmp_path) as alloc:
        a = alloc.acquire("Classify", ONE, "type:nvidia-h100;count:1", "worker-1")
        b = alloc.acquire("Classify", ONE, "type:nvidia-h100;count:1", "worker-2")
        env_a, env_b = a.env(), b.env()
        assert env_a["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert {env_a["CUDA_VISIBLE_DEVICES"], env_b["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
        ctx = from_env(env_b)
        assert ctx.worker_id == "worker-2"
        (gpu,) = ctx.gpus()
        assert gpu.get_property("index") == env_b["CUDA_VISIBLE_DEVICES"]
        assert ctx.device_ordinal(gpu.get_property("index") or "") == 0
        assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env_a


def test_multi_gpu_worker(tmp_path: Path) -> None:
    with allocator(tmp_path) as alloc:
        a = alloc.acquire("Train", StageRequirements(gpu_count=3), "count:3", "w")
        assert a.env()["CUDA_VISIBLE_DEVICES"] == "0,1,2"
        with pytest.raises(ResourceShortageError, match="1 are free and 3 are leased"):
            alloc.acquire("Train", StageRequirements(gpu_count=2), "count:2", "w2")


def test_release_and_close(tmp_path: Path) -> None:
    alloc = allocator(tmp_path, num=1)
    a = alloc.acquire("S", ONE, "count:1", "w1")
    with pytest.raises(ResourceShortageError):
        alloc.acquire("S", ONE, "count:1", "w2")
    alloc.release(a)
    b = alloc.acquire("S", ONE, "count:1", "w2")
    assert b.gpus == a.gpus
    alloc.close()
    lease_file = json.loads((tmp_path / "beam-gpu-runner-leases.json").read_text())
    assert lease_file["leases"] == []


def test_fractional_share_env(tmp_path: Path) -> None:
    half = StageRequirements(gpu_count=0.5)
    with allocator(tmp_path, num=1) as alloc:
        a = alloc.acquire("S", half, "count:0.5", "w1")
        b = alloc.acquire("S", half, "count:0.5", "w2")
        assert a.gpus[0].get_property("uuid") == b.gpus[0].get_property("uuid")
        env = a.env()
        assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"
        assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        assert a.gpu_share == 0.5 and a.gpus[0].get_property("share") == "0.5"
        with pytest.raises(ResourceShortageError, match="a 0.5 share of one GPU"):
            alloc.acquire("S", half, "count:0.5", "w3")


def test_no_gpu_stage_sees_no_gpu(tmp_path: Path) -> None:
    with allocator(tmp_path) as alloc:
        env = alloc.acquire("Parse", StageRequirements(), None, "w").env()
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert from_env(env).gpus() == []


def test_type_mismatch_message(tmp_path: Path) -> None:
    with allocator(tmp_path, "external-resource.gpu.param.device-name=NVIDIA L40S") as alloc:
        with pytest.raises(ResourceShortageError) as info:
            alloc.acquire("Classify", StageRequirements(gpu_count=1, accelerator_type="nvidia-l4"),
                          "type:nvidia-l4;count:1", "worker-7")
    text = str(info.value)
    for word in ("'Classify'", "'type:nvidia-l4;count:1'", "type nvidia-l4", "worker-7",
                 "4 x NVIDIA L40S", "0 match the type",
                 "external-resource.gpu.param.device-name"):
        assert word in text


def test_no_devices_never_an_empty_set(tmp_path: Path) -> None:
    config = load_config(None, [])
    alloc = DeviceAllocator(config, str(tmp_path),
                            drivers={"gpu": GpuDriver({}, nvml=TestingNvml(error="none"))})
    assert alloc.devices() == {"gpu": ()}
    with pytest.raises(ResourceShortageError) as info:
        alloc.acquire("Classify", ONE, "type:nvidia-h100;count:1", "w")
    assert "found 0 GPU(s)" in str(info.value)
    assert "a host with more GPUs" in str(info.value)
    # a stage without hints is fine on that host
    assert alloc.acquire("Parse", StageRequirements(), None, "w").gpus == ()


def test_amount_limits_the_pool(tmp_path: Path) -> None:
    with allocator(tmp_path, "external-resource.gpu.amount=1") as alloc:
        assert len(alloc.devices()["gpu"]) == 1
        alloc.acquire("S", ONE, "count:1", "w1")
        with pytest.raises(ResourceShortageError,
                           match="external-resource.gpu.param.num-devices"):
            alloc.acquire("S", ONE, "count:1", "w2")


def test_real_gpu_driver_shortage_names_amount(tmp_path: Path) -> None:
    nvml = TestingNvml([NvmlDevice(i, "GPU-%d" % i, "Tesla T4", 16 << 30) for i in range(2)])
    config = load_config(None, ["external-resource.gpu.amount=1"])
    alloc = DeviceAllocator(config, str(tmp_path), drivers={"gpu": GpuDriver({}, nvml=nvml)})
    with pytest.raises(ResourceShortageError, match="external-resource.gpu.amount"):
        alloc.acquire("S", StageRequirements(gpu_count=2), "count:2", "w")
    alloc.close()


def test_missing_gpu_resource(tmp_path: Path) -> None:
    config = load_config(None, ["external-resources=fpga",
                                "external-resource.fpga.driver-factory.class=testing"])
    with DeviceAllocator(config, str(tmp_path)) as alloc:
        a = alloc.acquire("Parse", StageRequirements(), None, "w")
        assert len(a.resources["fpga"]) == 1            # shared resources go to everyone
        assert json.loads(a.env()[RESOURCES_ENV])["resources"]["fpga"][0]["index"] == "0"
        with pytest.raises(ResourceShortageError, match="add gpu to external-resources"):
            alloc.acquire("S", ONE, "count:1", "w")


class TestingListlessDriver:
    """A third-party driver without all_resource_info."""

    __test__ = False

    def retrieve_resource_info(self, amount: int) -> set[ResourceInfo]:
        return {ResourceInfo.of(index=i, name="Tesla T4", uuid="GPU-x%d" % i)
                for i in range(amount)}


class TestingListlessFactory:
    __test__ = False

    def create_driver(self, params: Mapping[str, str]) -> TestingListlessDriver:
        return TestingListlessDriver()


def test_driver_without_enumeration_needs_amount(tmp_path: Path) -> None:
    spec = "external-resource.gpu.driver-factory.class=%s:TestingListlessFactory" % __name__
    with pytest.raises(ConfigError, match="set external-resource.gpu.amount"):
        DeviceAllocator(load_config(None, [spec]), str(tmp_path)).devices()
    alloc = DeviceAllocator(load_config(None, [spec, "external-resource.gpu.amount=2"]),
                            str(tmp_path))
    assert [g.get_property("index") for g in alloc.devices()["gpu"]] == ["0", "1"]


def test_mig_env_uses_mig_uuids(tmp_path: Path) -> None:
    nvml = TestingNvml([NvmlDevice(3, "MIG-aaa", "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
                                   20 << 30, mig_index=0, parent_uuid="GPU-p")])
    alloc = DeviceAllocator(load_config(None, []), str(tmp_path),
                            drivers={"gpu": GpuDriver({}, nvml=nvml)})
    env = alloc.acquire("S", StageRequirements(gpu_count=1, accelerator_type="nvidia-a100"),
                        "type:nvidia-a100", "w").env()
    assert env["CUDA_VISIBLE_DEVICES"] == "MIG-aaa"
    assert from_env(env).device_ordinal("3") == 0
    alloc.close()


def test_assignment_and_error_pickle(tmp_path: Path) -> None:
    with allocator(tmp_path, num=1) as alloc:
        a = alloc.acquire("S", ONE, "count:1", "w1")
        again = pickle.loads(pickle.dumps(a))
        assert isinstance(again, Assignment) and again.env() == a.env()
        with pytest.raises(ResourceShortageError) as info:
            alloc.acquire("S", ONE, "count:1", "w2")
    err = pickle.loads(pickle.dumps(info.value))
    assert type(err) is ResourceShortageError and str(err) == str(info.value)


def test_discovery_happens_once(tmp_path: Path) -> None:
    nvml = TestingNvml([NvmlDevice(0, "GPU-0", "Tesla T4", 16 << 30)])
    alloc = DeviceAllocator(load_config(None, []), str(tmp_path),
                            drivers={"gpu": GpuDriver({}, nvml=nvml)})
    for n in range(3):
        alloc.release(alloc.acquire("S", StageRequirements(gpu_count=1), "count:1", "w%d" % n))
    assert nvml.calls == 1
    alloc.close()


def test_spec_keys() -> None:
    assert ResourceSpec("gpu", "gpu").key("amount") == "external-resource.gpu.amount"


def test_leases_name_the_job_that_holds_them(tmp_path: Path) -> None:
    with allocator(tmp_path) as alloc:
        alloc.acquire("Classify", ONE, "type:nvidia-h100;count:1", "worker-1", job="job-7")
        (lease,) = alloc.lease_table.snapshot()
        assert (lease.job, lease.holder) == ("job-7", "Classify/worker-1")


def test_a_worker_waits_for_devices_another_job_leases(tmp_path: Path, caplog) -> None:
    import threading
    holder = allocator(tmp_path, num=2)
    held = holder.acquire("Other", StageRequirements(gpu_count=2), "count:2", "w0",
                          job="other-job")
    waiter = allocator(tmp_path, num=2)
    waiter.wait_timeout = 60.0
    got: list[Assignment] = []
    thread = threading.Thread(target=lambda: got.append(
        waiter.acquire("Mine", ONE, "count:1", "w1", job="my-job")))
    thread.start()
    # It waits (and says who holds the devices) until the other job releases.
    for _ in range(200):
        if "waits for 1 GPU(s)" in caplog.text:
            break
        threading.Event().wait(0.05)
    assert "leased by job other-job" in caplog.text and not got
    holder.release(held)
    thread.join(30)
    assert got and got[0].gpus
    waiter.close()
    holder.close()


def test_the_wait_is_bounded_and_can_be_stopped(tmp_path: Path) -> None:
    holder = allocator(tmp_path, num=1)
    holder.acquire("Other", ONE, "count:1", "w0", job="other-job")
    waiter = allocator(tmp_path, num=1)
    waiter.wait_timeout = 0.3
    with pytest.raises(ResourceShortageError, match=r"waited 0.3 s, --device_wait_timeout"):
        waiter.acquire("Mine", ONE, "count:1", "w1")
    waiter.wait_timeout = 600.0
    with pytest.raises(ResourceShortageError, match="1 are leased"):
        waiter.acquire("Mine", ONE, "count:1", "w2", should_stop=lambda: True)
    # A request the host can never meet is refused at once, without waiting.
    with pytest.raises(ResourceShortageError, match="found 1 GPU"):
        waiter.acquire("Mine", StageRequirements(gpu_count=2), "count:2", "w3")
    holder.close()
    waiter.close()
