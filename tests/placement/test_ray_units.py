"""Ray placement pieces that need no Ray cluster (most need no Ray at all)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from unittest.mock import patch

from beam_gpu_runner.placement.ray import (
    LocalRayGpus, RayPlacement, RayPlacementError, RayRequest, ray_accelerator_type,
    ray_available, ray_device_label)
from beam_gpu_runner.placement.ray_actor import (
    HarnessSpec, describe_returncode, device_infos, gpu_infos, harness_env)
from beam_gpu_runner.resources import runtime_context
from beam_gpu_runner.resources.api import ResourceInfo
from beam_gpu_runner.resources.runtime_context import RuntimeContext
from beam_gpu_runner.resources.requirements import StageRequirements


@pytest.mark.parametrize("beam, ray_label", [
    ("nvidia-h100", "H100"),
    ("nvidia-h100-80gb", "H100"),
    ("nvidia-h100-mega-80gb", "H100"),
    ("nvidia-tesla-t4", "T4"),
    ("nvidia-tesla-v100", "V100"),
    ("nvidia-tesla-a100", "A100"),
    ("nvidia-a100-80gb", "A100"),
    ("nvidia-l4", "L4"),
    ("nvidia-l40s", "L40S"),
    ("nvidia-tesla-a10g", "A10G"),
    ("NVIDIA-B200", "B200"),
    ("nvidia-rtx-pro-6000", "RTX-PRO-6000"),
])
def test_beam_accelerator_types_map_to_ray_labels(beam: str, ray_label: str) -> None:
    assert ray_accelerator_type(beam) == ray_label


def test_accelerator_overrides_and_ray_labels_pass_through() -> None:
    assert ray_accelerator_type("nvidia-a100-80gb", {"nvidia-a100-80gb": "A100-80G"}) \
        == "A100-80G"
    if ray_available():
        assert ray_accelerator_type("AMD-Instinct-MI300X-OAM") == "AMD-Instinct-MI300X-OAM"
    with pytest.raises(ValueError):
        ray_accelerator_type(" ")


def test_requests_from_requirements() -> None:
    one = RayRequest.of(StageRequirements(gpu_count=1, accelerator_type="nvidia-h100",
                                          min_ram_bytes=2**30), 1.0)
    assert (one.num_gpus, one.num_cpus, one.memory, one.accelerator_type) == \
        (1.0, 1.0, 2**30, "H100")
    assert not one.uses_placement_group
    assert one.resources() == {"CPU": 1.0, "GPU": 1.0, "memory": float(2**30),
                               "accelerator_type:H100": 0.001}
    half = RayRequest.of(StageRequirements(gpu_count=0.5, cpu_count=3), 1.0)
    assert (half.num_gpus, half.num_cpus) == (0.5, 3.0)
    odd = RayRequest.of(StageRequirements(gpu_count=1.5), 0.0)
    assert odd.num_gpus == 2.0 and odd.uses_placement_group
    assert odd.resources() == {"GPU": 2.0}
    default = RayRequest.of(StageRequirements(gpu_count=1), None)
    assert default.num_cpus is None and default.resources() == {"GPU": 1.0}
    assert "num_cpus=default" in default.describe()
    cpu_only = RayRequest.of(StageRequirements(accelerator_type="nvidia-h100"), 1.0)
    assert cpu_only.accelerator_type is None and cpu_only.num_gpus == 0


def test_error_pickles_with_worker_id() -> None:
    error = RayPlacementError("cannot place worker w-1", "w-1")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == "cannot place worker w-1" and again.worker_id == "w-1"


def test_bad_start_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="start_timeout"):
        RayPlacement(start_timeout=0)


def test_returncode_descriptions() -> None:
    assert describe_returncode(None) == "running"
    assert describe_returncode(0) == "exit code 0"
    assert describe_returncode(-9) == "killed by signal 9 (SIGKILL)"


def test_gpu_infos_without_nvml_and_env_layering() -> None:
    infos = gpu_infos(["3", "1"])
    assert [i.get_property("index") for i in infos] == ["3", "1"]
    if infos[0].get_property("name") == "ray-gpu-3":     # no NVML on this host
        assert infos[0].get_property("uuid") == "ray-gpu-3"
    resource_env = RuntimeContext("w-9", {"gpu": infos}).to_env()
    spec = HarnessSpec("w-9", 'url: "h:1"\n', 'url: "h:2"\n', "{}",
                       gpu_count=2, env={"A": "launch", "CUDA_VISIBLE_DEVICES": "7"})
    env = harness_env(spec, resource_env, {"A": "base", "B": "base", "WORKER_ID": "x"})
    assert env["A"] == "launch" and env["B"] == "base" and env["WORKER_ID"] == "w-9"
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"       # resources beat the launch env
    assert env["CONTROL_API_SERVICE_DESCRIPTOR"] == 'url: "h:1"\n'
    ctx = runtime_context.from_env(env)
    assert ctx.worker_id == "w-9" and ctx.device_ordinal(3) == 1


@pytest.mark.slow   # a fresh interpreter
def test_placement_modules_import_without_ray() -> None:
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if the [ray] extra were not installed\n"
        "import beam_gpu_runner.placement.ray as r\n"
        "p = r.RayPlacement()\n"
        "assert not r.ray_available()\n"
        "assert r.ray_accelerator_type('nvidia-h100') == 'H100'\n"
        "try:\n"
        "    p.advertise_host()\n"
        "except r.RayPlacementError as e:\n"
        "    assert 'pip install' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error without Ray')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ))
    assert result.returncode == 0, result.stderr


def test_vendor_only_type_asks_ray_for_any_gpu() -> None:
    from beam_gpu_runner.placement.ray import RayRequest
    for vendor in ("nvidia", "nvidia-gpu"):
        request = RayRequest.of(StageRequirements(gpu_count=1, accelerator_type=vendor), 0.0)
        assert request.num_gpus == 1.0 and request.accelerator_type is None


# -- a local Ray declaring the runner's devices ---------------------------------

def _gpu(index: object, name: str = "NVIDIA H100 80GB HBM3", **more: object) -> ResourceInfo:
    return ResourceInfo.of(index=index, uuid="GPU-testing-%s" % index, name=name, **more)


def test_fake_devices_become_ray_gpus_with_their_accelerator_label() -> None:
    declared = LocalRayGpus.of([_gpu(0), _gpu(1)])
    assert declared.ray_ids == ("0", "1")
    assert declared.labels == ("H100",)
    assert declared.init_kwargs({}) == {
        "num_gpus": 2, "resources": {"accelerator_type:H100": 1.0}}
    assert declared.table() == {"0": _gpu(0), "1": _gpu(1)}
    assert "Ray id 1 = GPU-testing-1 (NVIDIA H100 80GB HBM3)" in declared.describe()
    # A hint for the devices' type asks Ray for the label they were declared with.
    request = RayRequest.of(StageRequirements(gpu_count=1, accelerator_type="nvidia-h100"), 0)
    assert request.accelerator_type in declared.labels


def test_declared_resources_merge_with_given_ones_and_no_devices_declare_none() -> None:
    declared = LocalRayGpus.of([_gpu(3)])
    kwargs = declared.init_kwargs({"resources": {"disk": 2.0, "accelerator_type:H100": 5.0}})
    assert kwargs == {"num_gpus": 1,
                      "resources": {"disk": 2.0, "accelerator_type:H100": 5.0}}
    assert declared.table() == {"3": _gpu(3)}
    none = LocalRayGpus.of([])
    assert none.init_kwargs({}) == {"num_gpus": 0}
    assert none.describe() == "no GPUs (the runner's drivers report none)"


def test_mixed_types_mig_instances_and_overrides(caplog) -> None:
    a100 = ResourceInfo.of(index=0, uuid="GPU-a", name="NVIDIA A100-SXM4-80GB",
                           **{"memory-total": 85899345920})
    mig = ResourceInfo.of(index=1, uuid="MIG-b", name="NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                          **{"mig-index": 0, "parent-index": 1})
    declared = LocalRayGpus.of([a100, mig], {"nvidia-a100-80gb": "A100-80G",
                                             "nvidia-l4": "L4"})
    assert declared.ray_ids == ("0", "MIG-b")        # as CUDA_VISIBLE_DEVICES names them
    assert declared.labels == ("A100", "A100-80G", "H100")   # L4 matches no device
    assert "GPUs of 2 types ['A100', 'H100']" in caplog.text
    assert "Ray cannot tell them apart" in caplog.text


def test_devices_ray_cannot_number_are_refused() -> None:
    with pytest.raises(RayPlacementError, match="has no 'index' property"):
        LocalRayGpus.of([ResourceInfo.of(uuid="GPU-x", name="NVIDIA L4")])
    with pytest.raises(RayPlacementError, match="two devices have index 2"):
        LocalRayGpus.of([_gpu(2), _gpu(2)])


@pytest.mark.parametrize("name, label", [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("Tesla V100-SXM2-16GB", "V100"),
    ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX-PRO-6000"),
    ("NVIDIA GeForce RTX 5090", "GeForce-RTX-5090"),
    ("Testing GPU (CPU)", "Testing-GPU-(CPU)"),
])
def test_device_names_get_rays_node_labels(name: str, label: str) -> None:
    assert ray_device_label(name) == label
    # The copy of Ray's rule used when Ray's private function is not there.
    with patch.dict(sys.modules, {"ray._private.accelerators.nvidia_gpu": None}):
        assert ray_device_label(name) == label
    if ray_available():   # canary: Ray's own (private) rule still says the same
        from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
        assert NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(name) == label
    assert ray_device_label(" ") is None


@pytest.mark.parametrize("hint, name", [
    ("nvidia-h100", "NVIDIA H100 80GB HBM3"),
    ("nvidia-h100-80gb", "NVIDIA H100 80GB HBM3"),
    ("nvidia-tesla-a100", "NVIDIA A100-SXM4-40GB"),
    ("nvidia-a100-80gb", "NVIDIA A100-SXM4-80GB"),
    ("nvidia-tesla-v100", "Tesla V100-SXM2-16GB"),
    ("nvidia-tesla-t4", "Tesla T4"),
    ("nvidia-l4", "NVIDIA L4"),
    ("nvidia-l40s", "NVIDIA L40S"),
    ("nvidia-rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell Server Edition"),
])
def test_a_hint_and_the_device_it_matches_get_the_same_ray_label(hint: str,
                                                                 name: str) -> None:
    assert ray_accelerator_type(hint) == ray_device_label(name)


def test_actor_describes_rays_gpus_from_the_device_table() -> None:
    table = LocalRayGpus.of([_gpu(0), _gpu(1)]).table()
    infos = device_infos(["1"], table)
    assert infos == (_gpu(1),)
    env = RuntimeContext("w-1", {"gpu": infos}).to_env()
    ctx = runtime_context.from_env(env)
    (gpu,) = ctx.gpus()
    assert (gpu.get_property("uuid"), gpu.get_property("name")) == (
        "GPU-testing-1", "NVIDIA H100 80GB HBM3")
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(RuntimeError, match=r"Ray assigned GPU id\(s\) \['7'\]"):
        device_infos(["7"], table)
    assert device_infos(["3"], {})[0].get_property("index") == "3"   # no table: NVML/ids
    spec = HarnessSpec("w", "", "", "{}", gpu_count=1, devices=table)
    assert pickle.loads(pickle.dumps(spec)).devices == table


def test_declares_only_when_it_would_start_a_local_ray(monkeypatch, tmp_path) -> None:
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))    # where `ray start` records a head
    asked: list[int] = []

    def gpus() -> list[ResourceInfo]:
        asked.append(1)
        return [_gpu(0)]

    assert RayPlacement(local_gpus=gpus)._declaration() == LocalRayGpus.of([_gpu(0)])
    assert asked == [1]
    assert RayPlacement()._declaration() is None                       # no device source
    assert RayPlacement("auto", local_gpus=gpus)._declaration() is None  # --ray_address
    assert RayPlacement(local_gpus=gpus, init_kwargs={"num_gpus": 1})._declaration() is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert RayPlacement(local_gpus=gpus)._declaration() is None
    monkeypatch.delenv("RAY_ADDRESS")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.2:6379")
    assert RayPlacement(local_gpus=gpus)._declaration() is None         # `ray start` head
    assert asked == [1]
