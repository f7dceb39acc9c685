"""Real GPUs: NVML discovery, a hinted stage's JAX device, the MNIST stage on CUDA.

Marked ``gpu`` and skipped on hosts without a usable NVIDIA GPU; every path here
also has a testing-driver twin (tests/runner/test_gpu_resources.py,
tests/transforms).
"""
from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import beam_gpu_runner

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_leftover_workers")]


def _gpu_names() -> list[str]:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no library
        pytest.skip("no usable NVML here: %s" % exc)
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                 for i in range(count)]
    finally:
        pynvml.nvmlShutdown()
    if not names:
        pytest.skip("NVML lists no GPU")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


class JaxOnMyGpu(beam.DoFn):
    def setup(self) -> None:
        import jax
        import jax.numpy as jnp
        ctx = beam_gpu_runner.runtime_context()
        device = ctx.jax_device()
        x = jax.device_put(jnp.arange(4.0), device)
        self._seen = (ctx.worker_id, os.environ.get("CUDA_VISIBLE_DEVICES"),
                      tuple(g.get_property("index") for g in ctx.gpus()),
                      device.platform, float((x * 2).sum()))

    def process(self, element):
        yield self._seen


def test_hinted_stage_computes_on_its_leased_gpu(tmp_path):
    names = _gpu_names()
    out = str(tmp_path / "seen")
    options = PipelineOptions(["--num_workers=1", "--lease_dir=%s" % tmp_path])
    with beam.Pipeline(runner=beam_gpu_runner.GpuRunner(), options=options) as p:
        _ = (p | beam.Create(range(8)) | beam.Reshuffle()
             | beam.ParDo(JaxOnMyGpu()).with_resource_hints(accelerator="type:nvidia;count:1")
             | beam.Distinct() | beam.io.WriteToText(out))
    seen = [eval(line) for name in os.listdir(tmp_path) if name.startswith("seen")
            for line in open(tmp_path / name) if line.strip()]
    assert len(seen) == 1, seen
    worker, visible, gpus, platform, total = seen[0]
    assert len(gpus) == 1 and visible == gpus[0] and int(gpus[0]) < len(names)
    assert platform == "gpu" and total == 12.0


def test_mnist_streaming_on_cuda_matches_offline_accuracy(tmp_path):
    _gpu_names()
    from beam_gpu_runner.pipelines import mnist_streaming
    config = mnist_streaming.StreamingConfig(rate=0, num_images=10000, output=str(tmp_path / "preds"))
    summary = mnist_streaming.run(config, ["--num_workers=2"], fake_gpu_when_none=False)
    assert summary.images == 10000 and summary.correct == 9254
    assert set(summary.images_by_device) == {"gpu:0"}, summary
