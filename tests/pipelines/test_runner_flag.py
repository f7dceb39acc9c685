"""What both MNIST pipelines share: runner options and the fake GPU fallback."""
from __future__ import annotations

import logging

from dataclasses import dataclass
from typing import Any, Mapping

import pytest

from beam_gpu_runner.pipelines import runner_flag
from beam_gpu_runner.pipelines.runner_flag import (
    DEFAULT_ACCELERATOR, DEFAULT_RUNNER, FAKE_GPU_ARGS, RunnerUnavailableError,
    check_runner, with_fake_gpu_if_none)
from beam_gpu_runner.resources.api import ResourceInfo
from beam_gpu_runner.resources.assignment import DeviceAllocator


@dataclass(frozen=True)
class _Run:
    runner: str = DEFAULT_RUNNER
    accelerator: str = DEFAULT_ACCELERATOR


@pytest.fixture
def host_gpus(monkeypatch: pytest.MonkeyPatch) -> list[ResourceInfo]:
    """The GPUs the default drivers find on this 'host' (append to add one)."""
    found: list[ResourceInfo] = []

    def devices(self: Any) -> Mapping[str, tuple[ResourceInfo, ...]]:
        return {"gpu": tuple(found)}

    monkeypatch.setattr(DeviceAllocator, "devices", devices)
    return found


def test_a_host_without_gpus_gets_one_fake_device(host_gpus: list[ResourceInfo],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)   # said at INFO: the demos' console stays quiet
    assert with_fake_gpu_if_none(_Run(), ["--num_workers=2"]) == [
        "--num_workers=2", *FAKE_GPU_ARGS]
    assert "no GPU found on this host" in caplog.text and "--nofake_gpu_when_none" in caplog.text
    # A local Ray started by --placement=ray declares the fake device too.
    assert with_fake_gpu_if_none(_Run(), ["--placement=ray"]) == [
        "--placement=ray", *FAKE_GPU_ARGS]


def test_fake_device_only_when_needed(host_gpus: list[ResourceInfo]) -> None:
    explicit = ["--external_resource=external-resource.gpu.amount=1"]
    assert with_fake_gpu_if_none(_Run(), explicit) == explicit
    assert with_fake_gpu_if_none(_Run(), ["--external_resources_config=r.yaml"]) == [
        "--external_resources_config=r.yaml"]
    joined = ["--placement=ray", "--ray_address=auto"]     # the cluster's nodes say
    assert with_fake_gpu_if_none(_Run(), joined) == joined
    assert with_fake_gpu_if_none(_Run(runner="FnApiRunner"), []) == []
    assert with_fake_gpu_if_none(_Run(accelerator=""), []) == []
    host_gpus.append(ResourceInfo.of(index=0, uuid="GPU-1", name="NVIDIA L4"))
    assert with_fake_gpu_if_none(_Run(), []) == []


def test_runner_must_import() -> None:
    check_runner("DirectRunner")
    with pytest.raises(RunnerUnavailableError, match="beam_gpu_runner.Nope"):
        check_runner("beam_gpu_runner.Nope")
    options = runner_flag.pipeline_options("DirectRunner", ["--num_workers=2"], streaming=True)
    assert options.get_all_options()["streaming"] is True
