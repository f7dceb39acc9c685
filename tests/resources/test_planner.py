"""The GPU planner: table-driven, and `plan` agrees with `run` on real pipelines."""
from __future__ import annotations

from dataclasses import replace

import apache_beam as beam
import pytest

from beam_gpu_runner.preprocess.fusion import fuse
from beam_gpu_runner.resources.assignment import ResourceShortageError
from beam_gpu_runner.resources.config import ExternalResourceConfig
from beam_gpu_runner.resources.planner import (
    DEGRADED, HONOURED, UNSATISFIABLE, CountingInventory, GpuRequest, plan_gpus)
from beam_gpu_runner.resources.report import build_plan
from beam_gpu_runner.resources.requirements import NO_REQUIREMENTS
from beam_gpu_runner.runner import worker_environment
from beam_gpu_runner.testing import gpu_test_args
from beam_gpu_runner.workers.plan import plan_pools

H100 = "nvidia-h100"


def req(count, kind=H100):
    return replace(NO_REQUIREMENTS, gpu_count=count, accelerator_type=kind)


@pytest.mark.parametrize("inventory, requests, num_workers, expected", [
    # one stage, one device per worker: as many workers as devices (<= num_workers)
    ({H100: 4}, {"a": req(1)}, 8, {"a": (HONOURED, 4)}),
    ({H100: 4}, {"a": req(1)}, 2, {"a": (HONOURED, 2)}),
    # two stages share the devices, each gets one first
    ({H100: 4}, {"a": req(1), "b": req(1)}, 8, {"a": (HONOURED, 2), "b": (HONOURED, 2)}),
    ({H100: 3}, {"a": req(2), "b": req(1)}, 8, {"a": (HONOURED, 1), "b": (HONOURED, 1)}),
    # the case `plan` once called honoured and `run` refused: together they
    # need more than the host has
    ({H100: 2}, {"a": req(2), "b": req(1)}, 8,
     {"a": (HONOURED, 1), "b": (UNSATISFIABLE, 0)}),
    # too few matching devices for even one worker
    ({H100: 1}, {"a": req(2)}, 8, {"a": (UNSATISFIABLE, 0)}),
    ({"nvidia-l4": 4}, {"a": req(1)}, 8, {"a": (UNSATISFIABLE, 0)}),
    # fractions share a device
    ({H100: 1}, {"a": req(0.5)}, 8, {"a": (DEGRADED, 2)}),
    ({H100: 1}, {"a": req(0.25)}, 3, {"a": (DEGRADED, 3)}),
])
def test_plan_gpus(inventory, requests, num_workers, expected):
    verdicts = plan_gpus([GpuRequest(k, (k,), r) for k, r in requests.items()],
                         CountingInventory(inventory), num_workers)
    assert {k: (v.status, v.workers) for k, v in verdicts.items()} == expected


def test_an_unsatisfiable_verdict_says_why_and_how_to_fix_it():
    verdicts = plan_gpus([GpuRequest("a", ("Big",), req(2)), GpuRequest("b", ("Small",), req(1))],
                         CountingInventory({H100: 2}, hint="external-resource.gpu.amount"),
                         8)
    detail = verdicts["b"].detail
    assert "other GPU stages ['Big']" in detail and "external-resource.gpu.amount" in detail
    short = plan_gpus([GpuRequest("a", ("A",), req(3))], CountingInventory({H100: 2}), 8)
    assert "of which 2 match" in short["a"].detail


def two_gpu_stages(p: beam.Pipeline, first: str, second: str) -> None:
    (p | beam.Create([1])
     | "Big" >> beam.Map(lambda x: x).with_resource_hints(accelerator=first)
     | "Small" >> beam.Map(lambda x: x).with_resource_hints(accelerator=second))


@pytest.mark.parametrize("devices, first, second", [
    (4, "type:nvidia-h100;count:2", "type:nvidia-h100;count:1"),
    (2, "type:nvidia-h100;count:2", "type:nvidia-h100;count:1"),   # the case above
    (1, "type:nvidia-h100;count:0.5", "type:nvidia-h100;count:0.5"),
    (1, "type:nvidia-h100;count:2", "type:nvidia-h100;count:1"),
])
def test_plan_says_what_run_does(devices, first, second):
    """``plan``'s verdict (build_plan) and ``run``'s pool sizes (plan_pools)
    come from one planner: they agree, or run fails where plan said it would."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_gpu_runner.options import GpuRunnerOptions
    from beam_gpu_runner.resources.assignment import DeviceAllocator

    p = beam.Pipeline(options=PipelineOptions(gpu_test_args(num_devices=devices)))
    two_gpu_stages(p, first, second)
    proto = p.to_runner_api(default_environment=worker_environment())
    config = ExternalResourceConfig.from_options(p._options.view_as(GpuRunnerOptions))
    allocator = DeviceAllocator(config)
    plan = build_plan(proto, config, allocator.devices(), num_workers=2)
    said = {s.transforms: s.statuses[0].status for s in plan.stages}
    context, stages = fuse(proto)
    if "unsatisfiable" in said.values():
        with pytest.raises(ResourceShortageError):
            plan_pools(stages, context.components, 2, allocator)
        return
    pools = plan_pools(stages, context.components, 2, allocator)
    for key, verdict in pools.verdicts.items():
        assert verdict.status in said.values()
        assert pools.sizes[key] == verdict.workers >= 1
