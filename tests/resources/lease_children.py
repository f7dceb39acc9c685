"""Child-process bodies for the lease coordination tests (spawned, so importable)."""
from __future__ import annotations

import os
from typing import Any

from beam_gpu_runner.resources.assignment import DeviceAllocator, ResourceShortageError
from beam_gpu_runner.resources.config import load_config
from beam_gpu_runner.resources.requirements import StageRequirements


def testing_allocator(lease_dir: str, num_devices: int) -> DeviceAllocator:
    config = load_config(None, [
        "external-resource.gpu.driver-factory.class=testing",
        "external-resource.gpu.param.num-devices=%d" % num_devices])
    return DeviceAllocator(config, lease_dir)


def hold_one_gpu(lease_dir: str, num_devices: int, worker_id: str, results: Any,
                 done: Any) -> None:
    """Ask for one GPU; report; hold it until ``done`` is set (or not at all)."""
    allocator = testing_allocator(lease_dir, num_devices)
    try:
        assignment = allocator.acquire(
            "Classify", StageRequirements(gpu_count=1, accelerator_type="nvidia-h100"),
            "type:nvidia-h100;count:1", worker_id)
    except ResourceShortageError as exc:
        results.put((worker_id, "short", str(exc), os.getpid()))
        return
    results.put((worker_id, "ok", assignment.gpus[0].get_property("index"), os.getpid()))
    if done is not None:
        done.wait(120)
    # returning without release(): a clean interpreter exit must release it
