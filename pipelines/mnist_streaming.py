"""Streaming MNIST inference: replay -> classify (GPU stage) -> windows -> sink.

    python -m beam_gpu_runner.pipelines.mnist_streaming \
        [--rate=1000] [--num_images=10000] [--batch_size=100] [--window_seconds=2] \
        [--model=PATH] [--output=-|DIR] [--accelerator=type:nvidia;count:1] \
        [--runner=beam_gpu_runner.GpuRunner] [Beam pipeline options...]

Runs on the bundled test set and model by default. Per-window progress lines
(images, accuracy, images/s, latency) and the final summary go to stderr; the
predictions go to stdout (``--output=-``) or to one CSV file per bundle in a
folder. Arguments absl does not know are handed to Beam's PipelineOptions.

The classification stage carries the resource hints ``accelerator=<--accelerator>``
and ``max_active_bundles_per_worker=2``.
The default ``type:nvidia;count:1`` says "one GPU, any NVIDIA model": the type
names the vendor and no model, in Beam's ``type:nvidia-<model>`` spelling
(``type:nvidia-h100;count:1`` would pin the model; GpuRunner matches the
type's words against the device name's words). ``--accelerator=count:1`` (no
type) asks GpuRunner for any GPU at all; ``--accelerator=`` (empty) drops the
hint. Other runners (DirectRunner) ignore hints.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import apache_beam as beam
from absl import app, flags
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.transforms.window import FixedWindows

from beam_gpu_runner.pipelines.runner_flag import (  # noqa: F401 (FAKE_GPU_ARGS re-exported)
    DEFAULT_ACCELERATOR, DEFAULT_RUNNER, FAKE_GPU_ARGS, RunnerUnavailableError, parse_known,
    pipeline_options, with_fake_gpu_if_none)
from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms.classifier import METRICS_NAMESPACE
from beam_gpu_runner.transforms.classify import ClassifyMnist
from beam_gpu_runner.transforms.replay import ReplayMnist
from beam_gpu_runner.transforms.sink import WritePredictions
from beam_gpu_runner.transforms.window_stats import WindowedStats

_LOG = logging.getLogger(__name__)

CLASSIFY_BUNDLES_PER_WORKER = 2


@dataclass(frozen=True)
class StreamingConfig:
    model_path: str = field(default_factory=bundled.default_model_path)
    images_path: str = field(default_factory=bundled.test_images_path)
    labels_path: str = field(default_factory=bundled.test_labels_path)
    rate: float = 0.0
    num_images: int = 10000
    batch_size: int = 100
    window_seconds: float = 2.0
    output: str = "-"
    accelerator: str = DEFAULT_ACCELERATOR
    runner: str = DEFAULT_RUNNER

    def __post_init__(self) -> None:
        if self.window_seconds <= 0:
            raise ValueError("StreamingConfig: window_seconds must be > 0, got %r"
                             % self.window_seconds)


@dataclass(frozen=True)
class StreamingSummary:
    """Totals from the classification stage's counters, and the run's wall time."""

    images: int
    correct: int
    seconds: float
    images_by_device: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return ("summary: %d images, accuracy %.2f%% (%d correct), %.0f images/s "
                "over %.1f s, devices %s"
                % (self.images, 100.0 * self.accuracy, self.correct,
                   self.images_per_second, self.seconds, self.images_by_device))


def build(pipeline: beam.Pipeline, config: StreamingConfig) -> beam.PCollection:
    """Add the streaming graph to ``pipeline``; returns the per-window stats."""
    classify: beam.PTransform = beam.ParDo(ClassifyMnist(config.model_path, config.batch_size))
    if config.accelerator:
        # ClassifyMnist shares one model per worker (Beam's shared.Shared), so
        # a GPU worker may run two bundles at once: it receives the next
        # batches while it classifies (GpuRunner's GPU default is one).
        classify = classify.with_resource_hints(
            accelerator=config.accelerator,
            max_active_bundles_per_worker=str(CLASSIFY_BUNDLES_PER_WORKER))
    predictions = (
        pipeline
        | "Replay" >> ReplayMnist(config.images_path, config.labels_path,
                                  batch_size=config.batch_size, rate=config.rate,
                                  num_images=config.num_images)
        | "Classify" >> classify)
    _ = predictions | "Sink" >> WritePredictions(config.output)
    return (predictions
            | "Window" >> beam.WindowInto(FixedWindows(config.window_seconds))
            | "WindowStats" >> WindowedStats())


def _summary(result: beam.runners.runner.PipelineResult, seconds: float) -> StreamingSummary:
    counters = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    if not totals:
        _LOG.warning("mnist_streaming: the runner reported no counters; summary is empty")
    devices = {k[len("images_on_"):]: v for k, v in totals.items()
               if k.startswith("images_on_")}
    return StreamingSummary(images=totals.get("images", 0), correct=totals.get("correct", 0),
                            seconds=seconds, images_by_device=devices)


def run(config: StreamingConfig, pipeline_args: Sequence[str] = (),
        fake_gpu_when_none: bool = True) -> StreamingSummary:
    """Run the pipeline to the end (or until Ctrl-C) and return its summary."""
    if fake_gpu_when_none:
        pipeline_args = with_fake_gpu_if_none(config, pipeline_args)
    options = pipeline_options(config.runner, pipeline_args,
                               streaming=config.num_images == 0)
    _LOG.info("mnist_streaming: %s", config)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config)
    started = time.time()
    result = pipeline.run()
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        _LOG.info("mnist_streaming: interrupted; cancelling")
        try:
            result.cancel()
        except NotImplementedError:
            _LOG.warning("mnist_streaming: runner %s cannot cancel", config.runner)
    summary = _summary(result, time.time() - started)
    _LOG.debug("%s", summary.line())
    print(summary.line(), file=sys.stderr, flush=True)
    return summary


FLAGS = flags.FlagValues()
flags.DEFINE_string("runner", DEFAULT_RUNNER, "Beam runner (DirectRunner for local tests).",
    flag_values=FLAGS)
flags.DEFINE_float("rate", 1000.0, "Images per second to replay; 0 = as fast as possible.",
    flag_values=FLAGS)
flags.DEFINE_integer("num_images", 10000, "Images to replay (looping over the set); 0 = endless.",
    flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 100, "Images per batch (the classifier's fixed shape).",
    flag_values=FLAGS)
flags.DEFINE_float("window_seconds", 2.0, "Fixed window length for accuracy/throughput.",
    flag_values=FLAGS)
flags.DEFINE_string("model", None, "Model .npz (default: the bundled softmax model).",
    flag_values=FLAGS)
flags.DEFINE_string("images", None, "IDX images file (default: bundled test set).",
    flag_values=FLAGS)
flags.DEFINE_string("labels", None, "IDX labels file (default: bundled test set).",
    flag_values=FLAGS)
flags.DEFINE_string("output", "-", "Folder for prediction CSV files, or - for stdout.",
    flag_values=FLAGS)
flags.DEFINE_string("accelerator", DEFAULT_ACCELERATOR,
                    "Resource hint of the classification stage; empty: none.",
    flag_values=FLAGS)
flags.DEFINE_bool("fake_gpu_when_none", True,
                  "On GpuRunner, give the hinted stage a fake (testing) GPU when the "
                  "host has none, instead of failing.", flag_values=FLAGS)


def config_from_flags() -> StreamingConfig:
    return StreamingConfig(
        model_path=FLAGS.model or bundled.default_model_path(),
        images_path=FLAGS.images or bundled.test_images_path(),
        labels_path=FLAGS.labels or bundled.test_labels_path(),
        rate=FLAGS.rate, num_images=FLAGS.num_images, batch_size=FLAGS.batch_size,
        window_seconds=FLAGS.window_seconds, output=FLAGS.output,
        accelerator=FLAGS.accelerator, runner=FLAGS.runner)


def parse_flags(argv: list[str]) -> list[str]:
    """absl parses its flags; everything else is kept for Beam."""
    return parse_known(FLAGS, argv, __doc__ or "")


def _main(argv: list[str]) -> None:
    try:
        run(config_from_flags(), argv[1:], fake_gpu_when_none=FLAGS.fake_gpu_when_none)
    except RunnerUnavailableError as exc:
        sys.exit("mnist_streaming: %s" % exc)


def main(argv: Optional[list[str]] = None) -> None:
    app.run(_main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
