"""GPU stages on GpuRunner with the testing driver: real worker processes,
fake devices (the same code path as real GPUs, without hardware)."""
from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

import beam_gpu_runner
from beam_gpu_runner.resources.assignment import ResourceShortageError
from beam_gpu_runner.resources.hints import InvalidHintError
from beam_gpu_runner.testing import gpu_test_args

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_workers")]

H100 = "NVIDIA H100 80GB HBM3"


class WhatISee(beam.DoFn):
    """Emits (stage tag, worker id, GPU indexes, CUDA_VISIBLE_DEVICES, jax device)."""

    def __init__(self, tag: str) -> None:
        self._tag = tag

    def setup(self) -> None:
        ctx = beam_gpu_runner.runtime_context()
        self._seen = (
            self._tag, ctx.worker_id,
            tuple(sorted(i.get_property("index") for i in ctx.external_resource_infos("gpu"))),
            os.environ.get("CUDA_VISIBLE_DEVICES"),
            str(ctx.jax_device()))

    def process(self, element):
        yield self._seen


def options(num_devices: int = 4, device_name: str = H100, workers: int = 2,
            *extra: str) -> PipelineOptions:
    return PipelineOptions(gpu_test_args(num_devices=num_devices, device_name=device_name)
                           + ["--runner=beam_gpu_runner.GpuRunner",
                              "--num_workers=%d" % workers, *extra])


def run_and_collect(opts: PipelineOptions, tmp_path, hints: dict[str, str | None]):
    out = str(tmp_path / "seen")
    with beam.Pipeline(options=opts) as p:
        items = p | beam.Create(range(40)) | beam.Reshuffle()
        for tag, hint in hints.items():
            step = beam.ParDo(WhatISee(tag))
            if hint:
                step = step.with_resource_hints(accelerator=hint)
            _ = (items | "See%s" % tag >> step | "Distinct%s" % tag >> beam.Distinct()
                 | "Write%s" % tag >> beam.io.WriteToText(out + tag))
    seen = []
    for tag in hints:
        for name in os.listdir(tmp_path):
            if name.startswith("seen" + tag):
                with open(tmp_path / name) as f:
                    seen.extend(eval(line) for line in f if line.strip())
    return seen


def test_hinted_stages_get_distinct_devices_and_unhinted_none(tmp_path):
    seen = run_and_collect(options(), tmp_path, {
        "one": "type:nvidia-h100;count:1", "two": "type:nvidia-h100;count:2", "cpu": None})
    ones = [s for s in seen if s[0] == "one"]
    twos = [s for s in seen if s[0] == "two"]
    cpus = [s for s in seen if s[0] == "cpu"]
    assert ones and twos and cpus
    for _, _, gpus, visible, device in ones:
        assert len(gpus) == 1 and visible == ",".join(gpus)
        assert device == "cpu:0"     # fake devices: JAX has no GPU backend here
    for _, _, gpus, visible, _ in twos:
        assert len(gpus) == 2 and visible == ",".join(gpus)
    for _, _, gpus, visible, _ in cpus:
        assert gpus == () and visible == ""
    # No device is held by two live workers of this job at once.
    held = [g for _, _, gpus, _, _ in ones + twos for g in gpus]
    assert len(held) == len(set(held)) <= 4


def test_type_mismatch_fails_at_submission_naming_stage_hint_and_key(tmp_path):
    with pytest.raises(ResourceShortageError) as info:
        run_and_collect(options(device_name="NVIDIA L4"), tmp_path,
                        {"x": "type:nvidia-h100;count:1"})
    message = str(info.value)
    assert "'type:nvidia-h100;count:1'" in message
    assert "Seex" in message                      # the stage's transform
    assert "4 x NVIDIA L4" in message and "0 match the type" in message
    assert "external-resource.gpu.param.device-name" in message


def test_shortage_fails_fast_naming_the_config_key(tmp_path):
    with pytest.raises(ResourceShortageError,
                       match=r"external-resource\.gpu\.param\.num-devices"):
        run_and_collect(options(num_devices=1), tmp_path, {"x": "type:nvidia-h100;count:2"})


def test_malformed_hint_fails_at_submission_naming_hint_and_transform(tmp_path):
    with pytest.raises(InvalidHintError, match=r"count:abc.*Seex|Seex.*count:abc"):
        run_and_collect(options(), tmp_path, {"x": "type:nvidia-h100;count:abc"})


def test_fractional_count_shares_a_device_with_a_memory_budget(tmp_path):
    class Budget(beam.DoFn):
        def process(self, element):
            yield (os.environ.get("CUDA_VISIBLE_DEVICES"),
                   os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"))

    with beam.Pipeline(options=options(num_devices=1)) as p:
        seen = (p | beam.Create(range(10)) | beam.Reshuffle()
                | beam.ParDo(Budget()).with_resource_hints(
                    accelerator="type:nvidia-h100;count:0.5")
                | beam.Distinct())
        assert_that(seen, equal_to([("0", "0.5")]))
