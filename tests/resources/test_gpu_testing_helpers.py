"""beam_gpu_runner.testing: options and a TestPipeline with fake GPUs."""
from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import StandardOptions, WorkerOptions
from apache_beam.testing.util import assert_that, equal_to

import beam_gpu_runner
from beam_gpu_runner.options import GpuRunnerOptions
from beam_gpu_runner.resources.config import ExternalResourceConfig
from beam_gpu_runner.testing import GpuTestPipeline, gpu_test_options


def test_options_select_runner_testing_driver_and_private_leases() -> None:
    options = gpu_test_options(num_devices=3, device_name="Tesla T4", num_workers=2)
    assert options.view_as(StandardOptions).runner == "beam_gpu_runner.GpuRunner"
    gpu_opts = options.view_as(GpuRunnerOptions)
    assert options.view_as(WorkerOptions).num_workers == 2
    assert gpu_opts.lease_dir and os.path.isdir(gpu_opts.lease_dir)
    spec = ExternalResourceConfig.from_options(options).get("gpu")
    assert spec is not None and spec.driver_factory == "testing"
    assert spec.params == {"num-devices": "3", "device-name": "Tesla T4"}
    other = gpu_test_options().view_as(GpuRunnerOptions).lease_dir
    assert other != gpu_opts.lease_dir


def test_bad_device_count() -> None:
    with pytest.raises(ValueError, match="num_devices"):
        gpu_test_options(num_devices=-1)


def test_test_pipeline_carries_options_and_runs_elsewhere() -> None:
    p = GpuTestPipeline(num_devices=2, runner="DirectRunner",
                        extra_args=["--num_workers=1"])
    opts = p.get_pipeline_options().view_as(GpuRunnerOptions)
    assert opts.lease_dir == p.lease_dir
    assert p.get_pipeline_options().view_as(WorkerOptions).num_workers == 1
    with p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 2), equal_to([2, 4]))


def test_test_pipeline_refuses_options() -> None:
    with pytest.raises(TypeError, match="extra_args"):
        GpuTestPipeline(options=gpu_test_options())


class WhichGpu(beam.DoFn):
    def setup(self) -> None:
        gpus = beam_gpu_runner.runtime_context().gpus()
        self.index = gpus[0].get_property("index") if gpus else None

    def process(self, element: int):  # type: ignore[no-untyped-def]
        yield self.index is not None


@pytest.mark.slow
def test_docstring_example_on_gpu_runner() -> None:
    pytest.importorskip("beam_gpu_runner.runner",
                        reason="GpuRunner is not in this tree yet")
    with GpuTestPipeline(num_devices=2) as p:
        seen = (p
                | beam.Create([1, 2, 3])
                | beam.ParDo(WhichGpu()).with_resource_hints(
                    accelerator="type:nvidia-h100;count:1"))
        assert_that(seen, equal_to([True, True, True]))
