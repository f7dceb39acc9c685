"""MNIST streaming benchmarks: throughput, latency, and the raw JAX limit.

Both runners run ``beam_gpu_runner.pipelines.mnist_streaming.build`` unchanged
(replay -> classify -> CSV sink, plus windowed stats). Timing comes from the
sink itself: each sink bundle is one CSV file, renamed into place when the
bundle finishes, so a file's mtime is when its images reached the sink, and
each line carries its image's ``emitted_at`` (the replay's wall time).
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import apache_beam as beam
import numpy as np

from benchmarks.common import cold_start, options, steady_rate


@dataclass(frozen=True)
class SinkTrace:
    """Per image: emission time, sink time (file mtime), correct or not."""

    emitted: np.ndarray
    sunk: np.ndarray
    correct: np.ndarray

    @classmethod
    def read(cls, folder: str) -> "SinkTrace":
        emitted, sunk, correct = [], [], []
        for path in glob.glob(os.path.join(folder, "predictions-*.csv")):
            mtime = os.stat(path).st_mtime_ns / 1e9
            table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2, 3), ndmin=2)
            emitted.append(table[:, 2])
            sunk.append(np.full(table.shape[0], mtime))
            correct.append(table[:, 0] == table[:, 1])
        if not emitted:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0, bool))
        return cls(np.concatenate(emitted), np.concatenate(sunk), np.concatenate(correct))

    def __len__(self) -> int:
        return int(self.emitted.shape[0])

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self) else 0.0


@dataclass(frozen=True)
class StreamRun:
    runner: str
    num_workers: int
    images: int
    batch_size: int
    rate: float
    wall_s: float
    startup_s: float          # run() -> first images at the sink
    accuracy: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    latency_p99_all_ms: float  # including the warm-up images
    achieved_rate: float      # images emitted per second of emission span

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_stream(runner: str, num_images: int, rate: float = 0.0, batch_size: int = 100,
               num_workers: int = 0, warmup_fraction: float = 0.1,
               extra: Sequence[str] = (), keep_hint: bool = False) -> StreamRun:
    """One run of the streaming pipeline; latency over images after the warm-up.
    ``extra``: further pipeline options (e.g. ``--accelerator_chaining=off``).
    Other runners than ``gpu`` run it with the accelerator hint dropped (so
    FnApiRunner fuses it into one stage) unless ``keep_hint`` (the same code
    as on GpuRunner: FnApiRunner cannot fuse across the hint)."""
    from beam_gpu_runner.pipelines.mnist_streaming import StreamingConfig, build
    folder = tempfile.mkdtemp(prefix="bench-mnist-")
    try:
        config = StreamingConfig(rate=rate, num_images=num_images, batch_size=batch_size,
                                 output=folder, window_seconds=1.0)
        if runner != "gpu" and not keep_hint:
            config = StreamingConfig(**{**asdict(config), "accelerator": ""})
        pipeline = beam.Pipeline(options=options(runner, num_workers, extra))
        build(pipeline, config)
        cold_start()
        started = time.time()
        pipeline.run().wait_until_finish()
        wall = time.time() - started
        trace = SinkTrace.read(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if len(trace) != num_images:
        raise RuntimeError("mnist %s: %d images at the sink, expected %d"
                           % (runner, len(trace), num_images))
    order = np.argsort(trace.emitted)
    emitted, sunk = trace.emitted[order], trace.sunk[order]
    skip = int(warmup_fraction * len(trace))
    latency = (sunk[skip:] - emitted[skip:]) * 1000.0
    span = emitted[-1] - emitted[0]
    return StreamRun(
        runner=runner, num_workers=num_workers, images=len(trace), batch_size=batch_size,
        rate=rate, wall_s=wall, startup_s=float(sunk.min() - started),
        accuracy=trace.accuracy,
        latency_p50_ms=float(np.percentile(latency, 50)),
        latency_p99_ms=float(np.percentile(latency, 99)),
        latency_max_ms=float(latency.max()),
        latency_p99_all_ms=float(np.percentile((sunk - emitted) * 1000.0, 99)),
        achieved_rate=float(len(trace) / span) if span > 0 else 0.0)


@dataclass(frozen=True)
class Throughput:
    """Steady-state throughput as the slope between a small and a large run.

    ``(images - small_images) / (wall_s - small_wall_s)``: what both runs pay
    once (worker start-up, JIT, pipeline fill and drain) cancels out. Without
    a small run (``--smoke``) it is ``images / wall_s``.
    """

    runner: str
    num_workers: int
    images: int
    wall_s: float
    small_images: int
    small_wall_s: float
    steady_images_per_s: float
    startup_s: float          # run() -> first images at the sink (large run)
    accuracy: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_throughput(runner: str, images: int, small_images: int, batch_size: int = 100,
                   num_workers: int = 0, extra: Sequence[str] = (),
                   keep_hint: bool = False) -> Throughput:
    small = run_stream(runner, small_images, 0.0, batch_size, num_workers, extra=extra,
                       keep_hint=keep_hint) if small_images else None
    big = run_stream(runner, images, 0.0, batch_size, num_workers, extra=extra,
                     keep_hint=keep_hint)
    steady = steady_rate("mnist %s" % runner, images, big.wall_s,
                         small_images if small else 0, small.wall_s if small else 0.0)
    return Throughput(runner=runner, num_workers=num_workers, images=images,
                      wall_s=big.wall_s, small_images=small_images,
                      small_wall_s=small.wall_s if small else 0.0,
                      steady_images_per_s=steady, startup_s=big.startup_s,
                      accuracy=big.accuracy)


@dataclass(frozen=True)
class RawLimit:
    batch_size: int
    images_per_s: float
    seconds: float
    device: str = "cpu:0"


def raw_limit(batch_size: int = 100, seconds: float = 2.0) -> RawLimit:
    """Jitted JAX on fixed batches of the test set, no Beam: the classifier's ceiling."""
    import jax

    from beam_gpu_runner.transforms import bundled
    from beam_gpu_runner.transforms.classifier import BatchClassifier
    from beam_gpu_runner.transforms.idx import read_mnist_cached
    data = read_mnist_cached(bundled.test_images_path(), bundled.test_labels_path())
    device = jax.devices()[0]   # the default backend: a GPU where there is one
    classifier = BatchClassifier.from_file(bundled.default_model_path(), device, batch_size)
    blocks = [data.images[i:i + batch_size] for i in range(0, len(data) - batch_size + 1,
                                                            batch_size)]
    for block in blocks[:20]:
        classifier(block)
    n, k = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        classifier(blocks[k % len(blocks)])
        n += batch_size
        k += 1
    elapsed = time.perf_counter() - t0
    return RawLimit(batch_size=batch_size, images_per_s=n / elapsed, seconds=elapsed,
                    device="%s:%d" % (device.platform, device.id))
