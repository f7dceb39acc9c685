"""Test your GPU pipelines the DirectRunner way, on machines without GPUs.

``GpuTestPipeline`` is a Beam ``TestPipeline`` that runs on
``beam_gpu_runner.GpuRunner`` with the ``testing`` driver faking ``num_devices``
GPUs and a private lease folder, so parallel test processes never collide.
Hinted stages get leased fake GPUs exactly as they would get real ones
(``CUDA_VISIBLE_DEVICES``, the runtime context, shortage errors); JAX falls back
to the CPU. Example::

    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    import beam_gpu_runner
    from beam_gpu_runner.testing import GpuTestPipeline


    class WhichGpu(beam.DoFn):
        def setup(self):
            gpus = beam_gpu_runner.runtime_context().gpus()
            self.index = gpus[0].get_property("index")

        def process(self, element):
            yield self.index is not None


    def test_each_element_sees_a_gpu():
        with GpuTestPipeline(num_devices=2) as p:
            seen = (p
                    | beam.Create([1, 2, 3])
                    | beam.ParDo(WhichGpu()).with_resource_hints(
                        accelerator="type:nvidia-h100;count:1"))
            assert_that(seen, equal_to([True, True, True]))

``gpu_test_options(num_devices=4, ...)`` gives the same options for your own
``TestPipeline(options=...)`` or ``beam.Pipeline(options=...)``; extra keyword
arguments become pipeline options (``num_workers=2``).
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any, Optional

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from beam_gpu_runner.drivers.testing import DEFAULT_DEVICE_NAME

GPU_RUNNER = "beam_gpu_runner.GpuRunner"

__all__ = ["GPU_RUNNER", "GpuTestPipeline", "gpu_test_args", "gpu_test_options",
           "private_lease_dir"]


def private_lease_dir() -> str:
    """A fresh lease folder, removed at interpreter exit."""
    path = tempfile.mkdtemp(prefix="beam-gpu-runner-test-leases-")
    atexit.register(shutil.rmtree, path, True)
    return path


def gpu_test_args(num_devices: int = 4, device_name: str = DEFAULT_DEVICE_NAME,
                  memory_bytes: Optional[int] = None, lease_dir: Optional[str] = None,
                  runner: str = GPU_RUNNER) -> list[str]:
    """Command-line flags selecting GpuRunner with ``num_devices`` fake GPUs."""
    if num_devices < 0:
        raise ValueError("gpu_test_args: num_devices must be >= 0, got %r" % num_devices)
    prefix = "external-resource.gpu."
    args = [
        "--runner=%s" % runner,
        "--external_resource=external-resources=gpu",
        "--external_resource=%sdriver-factory.class=testing" % prefix,
        "--external_resource=%sparam.num-devices=%d" % (prefix, num_devices),
        "--external_resource=%sparam.device-name=%s" % (prefix, device_name),
        "--lease_dir=%s" % (lease_dir or private_lease_dir()),
    ]
    if memory_bytes is not None:
        args.append("--external_resource=%sparam.memory-bytes=%d" % (prefix, memory_bytes))
    return args


def gpu_test_options(num_devices: int = 4, device_name: str = DEFAULT_DEVICE_NAME,
                     memory_bytes: Optional[int] = None, lease_dir: Optional[str] = None,
                     runner: str = GPU_RUNNER, **extra: Any) -> PipelineOptions:
    """PipelineOptions for GpuRunner with ``num_devices`` fake GPUs; ``extra``
    keyword arguments are further options (e.g. ``num_workers=2``)."""
    from beam_gpu_runner.options import GpuRunnerOptions  # registers our flags
    options = PipelineOptions(
        gpu_test_args(num_devices, device_name, memory_bytes, lease_dir, runner), **extra)
    options.view_as(GpuRunnerOptions)
    return options


class GpuTestPipeline(TestPipeline):
    """A TestPipeline on GpuRunner with ``num_devices`` fake GPUs.

    ``extra_args`` are more command-line flags (e.g. ``["--num_workers=2"]``).
    The runner is imported lazily by name, when the pipeline is built.
    """

    def __init__(self, num_devices: int = 4, device_name: str = DEFAULT_DEVICE_NAME,
                 memory_bytes: Optional[int] = None, lease_dir: Optional[str] = None,
                 extra_args: Optional[list[str]] = None, runner: str = GPU_RUNNER,
                 **kwargs: Any) -> None:
        from beam_gpu_runner.options import GpuRunnerOptions  # registers our flags
        if "options" in kwargs or "argv" in kwargs:
            raise TypeError("GpuTestPipeline builds its own options; pass extra flags "
                            "as extra_args=[...] (or use gpu_test_options with "
                            "TestPipeline)")
        self.lease_dir = lease_dir or private_lease_dir()
        args = gpu_test_args(num_devices, device_name, memory_bytes, self.lease_dir,
                             runner) + list(extra_args or [])
        options = PipelineOptions(args)
        options.view_as(GpuRunnerOptions)
        # argv=[]: TestPipeline would otherwise read pytest's own sys.argv.
        super().__init__(options=options, argv=[], **kwargs)
