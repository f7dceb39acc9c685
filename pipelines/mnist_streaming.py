"""Streaming MNIST inference: replay -> classify (GPU stage) -> windows -> sink.

    python -m beam_gpu_runner.pipelines.mnist_streaming \
        [--rate=1000] [--num_images=10000] [--batch_size=100] [--window_seconds=2] \
        [--model=PATH] [--output=-|DIR] [--accelerator=type:nvidia;count:1] \
        [--log_level=warning] [--runner=beam_gpu_runner.GpuRunner] \
        [Beam pipeline options...]

Runs on the bundled test set and model by default. One line per window
(clock times, images, accuracy, images/s over the span the stream covered,
latency) and the final summary go to stderr; the predictions go to stdout
(``--output=-``) or to one CSV file per bundle in a folder. Logging shows
warnings only unless ``--log_level=info`` or ``debug``. Ctrl-C (or SIGTERM)
cancels the job, prints one line saying so and the summary of what reached
the sink, and exits with 130 (143). Arguments absl does not know are handed
to Beam's PipelineOptions.

The classification stage carries the resource hints ``accelerator=<--accelerator>``
and ``max_active_bundles_per_worker=2``.
The default ``type:nvidia;count:1`` says "one GPU, any NVIDIA model": the type
names the vendor and no model, in Beam's ``type:nvidia-<model>`` spelling
(``type:nvidia-h100;count:1`` would pin the model; GpuRunner matches the
type's words against the device name's words). ``--accelerator=count:1`` (no
type) asks GpuRunner for any GPU at all; ``--accelerator=`` (empty) drops the
hint. Other runners (DirectRunner) ignore hints. On a host without GPUs,
GpuRunner gets one fake device (``--fake_gpus=1``) unless
``--nofake_gpu_when_none``.
"""
from __future__ import annotations

if __name__ == "__main__":
    # Run as a program: what Beam's imports log is kept off the console.
    from beam_gpu_runner.pipelines import console as _console
    _console.quiet_imports()

import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import apache_beam as beam
from absl import app, flags
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms.window import FixedWindows

import beam_gpu_runner.interrupts as interrupts
from beam_gpu_runner.pipelines import console
from beam_gpu_runner.pipelines.runner_flag import (  # noqa: F401 (FAKE_GPU_ARGS re-exported)
    DEFAULT_ACCELERATOR, DEFAULT_RUNNER, FAKE_GPU_ARGS, RunnerUnavailableError, parse_known,
    pipeline_options, with_fake_gpu_if_none)
from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms.classifier import METRICS_NAMESPACE
from beam_gpu_runner.transforms.classify_mnist import ClassifyMnist
from beam_gpu_runner.transforms.replay import ReplayMnist
from beam_gpu_runner.transforms.sink import (
    STDOUT, WRITTEN, WRITTEN_CORRECT, WritePredictions, count_rows, prediction_files)
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
    """What reached the sink, the run's wall time and the images per device.

    ``images``/``correct`` count the sink's rows: its ``written`` counters,
    or, when the run was interrupted (or the runner reports no counters) and
    it wrote to a folder, the rows of the prediction files this run wrote.
    ``images_by_device`` comes from the classifier's counters. ``stop_signal`` is SIGINT or SIGTERM when the run
    was interrupted (its job cancelled), else None.
    """

    images: int
    correct: int
    seconds: float
    images_by_device: dict[str, int] = field(default_factory=dict)
    stop_signal: Optional[int] = None

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
            | "WindowStats" >> WindowedStats(
                batch_seconds=config.batch_size / config.rate if config.rate > 0 else 0.0))


def _counters(result: Optional[PipelineResult]) -> dict[str, int]:
    """This pipeline's counters by name ({} without a result or metrics)."""
    if result is None:
        return {}
    try:
        counters = result.metrics().query(
            MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except NotImplementedError:
        return {}
    totals: dict[str, int] = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


def _summary(result: Optional[PipelineResult], config: StreamingConfig,
             files_before: set[str], seconds: float,
             stop_signal: Optional[int] = None) -> StreamingSummary:
    totals = _counters(result)
    images, correct = totals.get(WRITTEN), totals.get(WRITTEN_CORRECT, 0)
    if config.output != STDOUT and (stop_signal is not None or images is None):
        # Cancelled: the files are what reached the sink, whatever the runner
        # reports of bundles cancelled around them (or it reported nothing).
        written = count_rows(config.output, skip=files_before)
        images, correct = written.rows, written.correct
    elif images is None:
        _LOG.warning("mnist_streaming: the runner reported no counters; the summary "
                     "cannot count the lines written to stdout")
    devices = {k[len("images_on_"):]: v for k, v in totals.items()
               if k.startswith("images_on_")}
    return StreamingSummary(images=images or 0, correct=correct, seconds=seconds,
                            images_by_device=devices, stop_signal=stop_signal)


def _cancel(result: PipelineResult, runner: str) -> None:
    if PipelineState.is_terminal(result.state):
        return
    try:
        result.cancel()
    except NotImplementedError:
        _LOG.warning("mnist_streaming: runner %s cannot cancel", runner)
    except KeyboardInterrupt:   # a second Ctrl-C: stop waiting for the cancel
        _LOG.warning("mnist_streaming: not waiting for the job to stop")


def run(config: StreamingConfig, pipeline_args: Sequence[str] = (),
        fake_gpu_when_none: bool = True) -> StreamingSummary:
    """Run the pipeline to the end and return its summary.

    On Ctrl-C (or SIGTERM inside ``interrupts.sigterm_interrupts()``) the job
    is cancelled, one line says so, and the summary of what reached the sink
    is printed and returned (its ``stop_signal`` set).
    """
    if fake_gpu_when_none:
        pipeline_args = with_fake_gpu_if_none(config, pipeline_args)
    options = pipeline_options(config.runner, pipeline_args,
                               streaming=config.num_images == 0)
    _LOG.info("mnist_streaming: %s", config)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config)
    files_before = prediction_files(config.output) if config.output != STDOUT else set()
    started = time.time()
    result: Optional[PipelineResult] = None
    stop_signal: Optional[int] = None
    try:
        result = pipeline.run()   # a batch job on GpuRunner: returns when done
        result.wait_until_finish()
    except KeyboardInterrupt as interrupt:
        stop_signal = int(interrupts.signal_of(interrupt))
        # GpuRunner cancels a batch job it was waiting for, and says which.
        result = result or getattr(interrupt, "pipeline_result", None)
        if result is not None:
            _cancel(result, config.runner)
        print("%s: the job was cancelled"
              % ("terminated" if stop_signal == signal.SIGTERM else "interrupted"),
              file=sys.stderr, flush=True)
    summary = _summary(result, config, files_before, time.time() - started, stop_signal)
    _LOG.debug("%s", summary.line())
    print(summary.line(), file=sys.stderr, flush=True)
    return summary


FLAGS = flags.FlagValues()
flags.DEFINE_string("runner", DEFAULT_RUNNER, "Beam runner (DirectRunner for local tests).",
    flag_values=FLAGS)
flags.DEFINE_float("rate", 1000.0, "Images per second to replay; 0 = as fast as possible.",
    flag_values=FLAGS)
flags.DEFINE_integer("num_images", 10000, "Images to replay (looping over the set); 0 = "
                     "endless (a streaming job: stop it with Ctrl-C).",
    flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 100, "Images per batch (the classifier's fixed shape).",
    flag_values=FLAGS)
flags.DEFINE_float("window_seconds", 2.0, "Fixed window length for accuracy/throughput "
                   "(one line per window on stderr).",
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
                  "host has none (--fake_gpus=1), instead of failing.", flag_values=FLAGS)
flags.DEFINE_enum("log_level", console.DEFAULT_LOG_LEVEL, list(console.LOG_LEVELS),
                  "Logging shown on the console (the runner's, Beam's, the workers'); "
                  "window lines and the summary are always printed.", flag_values=FLAGS)


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
    verbosity: Any = flags.FLAGS["verbosity"]
    console.configure(FLAGS.log_level,
                      root_level=logging.getLogger().level if verbosity.present else None)
    try:
        summary = run(config_from_flags(), argv[1:],
                      fake_gpu_when_none=FLAGS.fake_gpu_when_none)
    except RunnerUnavailableError as exc:
        sys.exit("mnist_streaming: %s" % exc)
    except KeyboardInterrupt as interrupt:   # before the job started
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(interrupts.exit_code(interrupt))
    if summary.stop_signal is not None:
        sys.exit(128 + summary.stop_signal)


def main(argv: Optional[list[str]] = None) -> None:
    # SIGTERM stops the run as Ctrl-C does: job cancelled, summary, cleanup.
    with interrupts.sigterm_interrupts():
        app.run(_main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
