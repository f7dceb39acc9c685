"""Ray placement pieces that need no Ray cluster (most need no Ray at all)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from beam_gpu_runner.placement.ray import (
    RayPlacement, RayPlacementError, RayRequest, ray_accelerator_type, ray_available)
from beam_gpu_runner.placement.ray_actor import (
    HarnessSpec, describe_returncode, gpu_infos, harness_env)
from beam_gpu_runner.resources import runtime_context
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
