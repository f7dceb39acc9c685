"""Train an MNIST model with Beam: data-parallel local SGD, averaged per epoch.

    python -m beam_gpu_runner.pipelines.mnist_train \
        [--model=softmax|mlp] [--epochs=N] [--num_shards=4] [--learning_rate=LR] \
        [--local_batch_size=B] [--data_dir=data/mnist] [--output=mnist_softmax.npz] \
        [--accelerator=type:nvidia;count:1] [--runner=beam_gpu_runner.GpuRunner] \
        [Beam pipeline options...]

Each epoch is one batch Beam pipeline (see transforms/training.py): the current
parameters are a side input, a ParDo trains a copy on each shard of the 60,000
training images, a CombineGlobally averages the copies. Between epochs the
driver takes the average as the new parameters (a cosine learning-rate
schedule) and logs the training loss and accuracy (of the model entering the
epoch, computed by the shards), the test accuracy (after the epoch) and the
devices the shards trained on. The result is an .npz model taking pixels/255
(``scale`` recorded in the file).

The training step carries the resource hint ``accelerator=<--accelerator>``
(default ``type:nvidia;count:1``: one GPU of any NVIDIA model per worker;
``--accelerator=`` drops it), so on GpuRunner each shard trains on its GPU
worker's device through the runtime context. On a host without GPUs the step
gets one fake device from the testing driver and computes on the CPU, as in
the streaming demo (``--nofake_gpu_when_none`` fails instead).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence

import apache_beam as beam
import jax
import numpy as np
from absl import app, flags

import beam_gpu_runner.interrupts as interrupts
from beam_gpu_runner.pipelines.runner_flag import (
    DEFAULT_ACCELERATOR, DEFAULT_RUNNER, RunnerUnavailableError, parse_known,
    pipeline_options, with_fake_gpu_if_none)
from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms import model as mnist_model
from beam_gpu_runner.transforms.classifier import Evaluation, evaluate
from beam_gpu_runner.transforms.idx import read_mnist_cached
from beam_gpu_runner.transforms.training import (
    EpochResult, ShardDevice, ShardTask, TrainEpoch)

_LOG = logging.getLogger(__name__)

# Per-model defaults, found by trying on the full training set.
DEFAULTS = {
    "softmax": {"epochs": 40, "learning_rate": 0.5, "local_batch_size": 50},
    "mlp": {"epochs": 30, "learning_rate": 0.4, "local_batch_size": 32},
}


@dataclass(frozen=True)
class TrainConfig:
    model: str = "softmax"
    epochs: int = 40
    learning_rate: float = 0.5
    local_batch_size: int = 50
    num_shards: int = 4
    hidden: int = 256
    weight_decay: float = 0.0
    seed: int = 0
    train_images: str = ""
    train_labels: str = ""
    test_images: str = field(default_factory=bundled.test_images_path)
    test_labels: str = field(default_factory=bundled.test_labels_path)
    output: str = "mnist_softmax.npz"
    runner: str = DEFAULT_RUNNER
    limit: Optional[int] = None  # for tests: train on the first images only
    #: The training step's accelerator hint; empty: none (CPU workers).
    accelerator: str = DEFAULT_ACCELERATOR

    def __post_init__(self) -> None:
        if self.model not in DEFAULTS:
            raise ValueError("TrainConfig: model must be one of %s, got %r"
                             % (sorted(DEFAULTS), self.model))
        for name in ("epochs", "local_batch_size", "num_shards", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError("TrainConfig: %s must be >= 1, got %r"
                                 % (name, getattr(self, name)))

    def learning_rate_at(self, epoch: int) -> float:
        """Cosine decay from ``learning_rate`` towards 0 over the epochs."""
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    learning_rate: float
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float
    #: Where each shard trained, by shard index.
    trained_on: tuple[ShardDevice, ...] = ()

    @property
    def devices(self) -> dict[str, int]:
        """Device label -> shards trained there."""
        counts: dict[str, int] = {}
        for where in self.trained_on:
            counts[where.label()] = counts.get(where.label(), 0) + 1
        return counts


@dataclass(frozen=True)
class TrainSummary:
    output: str
    epochs: list[EpochLog]
    test: Evaluation

    def devices(self) -> dict[str, int]:
        """Device label -> shards trained there, over all epochs."""
        counts: dict[str, int] = {}
        for log in self.epochs:
            for label, shards in log.devices.items():
                counts[label] = counts.get(label, 0) + shards
        return counts


def _write_result(result: Optional[EpochResult], path: str) -> None:
    if result is None:
        raise ValueError("mnist_train: epoch produced no shard updates (path %s)" % path)
    tmp = path + ".tmp.npz"
    np.savez(tmp, examples=np.int64(result.examples), loss=np.float64(result.loss),
             accuracy=np.float64(result.accuracy),
             trained_on=np.array(json.dumps([asdict(w) for w in result.trained_on])),
             **{"param_" + k: v for k, v in result.params.items()})
    os.replace(tmp, path)


def _read_result(path: str) -> EpochResult:
    with np.load(path) as npz:
        params = {k[len("param_"):]: np.asarray(npz[k]) for k in npz.files
                  if k.startswith("param_")}
        return EpochResult(params=params, examples=int(npz["examples"]),
                           loss=float(npz["loss"]), accuracy=float(npz["accuracy"]),
                           trained_on=tuple(ShardDevice(**w) for w in json.loads(
                               str(npz["trained_on"]))))


def run_epoch(config: TrainConfig, params: Mapping[str, np.ndarray], epoch: int,
              work_dir: str, pipeline_args: Sequence[str]) -> EpochResult:
    """One Beam pipeline: local SGD on every shard, averaged."""
    lr = config.learning_rate_at(epoch)
    tasks = [ShardTask(index=i, num_shards=config.num_shards, epoch=epoch, seed=config.seed,
                       learning_rate=lr, batch_size=config.local_batch_size,
                       weight_decay=config.weight_decay)
             for i in range(config.num_shards)]
    images, labels = config.train_images, config.train_labels
    if config.limit is not None:
        images, labels = _limited_copy(config, work_dir)
    path = os.path.join(work_dir, "epoch-%04d.npz" % epoch)
    with beam.Pipeline(options=pipeline_options(config.runner, pipeline_args)) as pipeline:
        _ = (pipeline
             | "Epoch%d" % epoch >> TrainEpoch(params, tasks, images, labels,
                                               mnist_model.TRAINED_SCALE,
                                               accelerator=config.accelerator)
             | "Save" >> beam.Map(_write_result, path))
    return _read_result(path)


def _limited_copy(config: TrainConfig, work_dir: str) -> tuple[str, str]:
    """The first ``limit`` training images as raw IDX files (for quick tests)."""
    images = os.path.join(work_dir, "train-limited-images-idx3-ubyte")
    labels = os.path.join(work_dir, "train-limited-labels-idx1-ubyte")
    if not os.path.exists(labels):
        data = read_mnist_cached(config.train_images, config.train_labels)
        n = min(int(config.limit or 0), len(data))
        with open(images, "wb") as f:
            f.write(np.array([2051, n, 28, 28], ">u4").tobytes())
            f.write(data.images[:n].tobytes())
        with open(labels, "wb") as f:
            f.write(np.array([2049, n], ">u4").tobytes())
            f.write(data.labels[:n].tobytes())
    return images, labels


def _test_accuracy(params: Mapping[str, np.ndarray], images: np.ndarray,
                   labels: np.ndarray) -> float:
    return float(mnist_model.accuracy(dict(params), images, labels, mnist_model.TRAINED_SCALE))


def train(config: TrainConfig, pipeline_args: Sequence[str] = (),
          fake_gpu_when_none: bool = True) -> TrainSummary:
    """Run all epochs, write the model to ``config.output``, evaluate it.

    ``fake_gpu_when_none``: on GpuRunner with an accelerator hint, a host
    without GPUs gives the training step one fake (testing) device.
    """
    for path in (config.train_images, config.train_labels):
        if not os.path.exists(path):
            raise FileNotFoundError(
                "mnist_train: training file %s does not exist (set --data_dir)" % path)
    if fake_gpu_when_none:
        pipeline_args = with_fake_gpu_if_none(config, pipeline_args)
    test = read_mnist_cached(config.test_images, config.test_labels)
    params = {k: np.asarray(v) for k, v in mnist_model.init(
        config.model, jax.random.PRNGKey(config.seed), config.hidden).items()}
    logs: list[EpochLog] = []
    _LOG.info("mnist_train: %s", config)
    with tempfile.TemporaryDirectory(prefix="mnist_train-") as work_dir:
        for epoch in range(config.epochs):
            started = time.time()
            result = run_epoch(config, params, epoch, work_dir, pipeline_args)
            params = dict(result.params)
            log = EpochLog(epoch=epoch + 1, learning_rate=config.learning_rate_at(epoch),
                           train_loss=result.loss, train_accuracy=result.accuracy,
                           test_accuracy=_test_accuracy(params, test.images, test.labels),
                           seconds=time.time() - started, trained_on=result.trained_on)
            logs.append(log)
            _LOG.info("epoch %d/%d lr %.4f: train loss %.4f accuracy %.2f%% (model entering "
                      "the epoch), test accuracy %.2f%% (after), %.1f s; shards trained on "
                      "%s", log.epoch, config.epochs, log.learning_rate, log.train_loss,
                      100 * log.train_accuracy, 100 * log.test_accuracy, log.seconds,
                      log.devices)
    mnist_model.save_model(config.output, params, mnist_model.TRAINED_SCALE)
    evaluation = evaluate(config.output, test.images, test.labels)
    _LOG.info("mnist_train: wrote %s; test accuracy %.2f%% (%d/%d)", config.output,
              100 * evaluation.accuracy, evaluation.correct, evaluation.total)
    return TrainSummary(output=config.output, epochs=logs, test=evaluation)


FLAGS = flags.FlagValues()
flags.DEFINE_string("runner", DEFAULT_RUNNER, "Beam runner (DirectRunner for local runs).",
    flag_values=FLAGS)
flags.DEFINE_enum("model", "softmax", sorted(DEFAULTS),
                  "softmax: one layer; mlp: one hidden ReLU layer.",
    flag_values=FLAGS)
flags.DEFINE_integer("epochs", None, "Epochs (default: 40 softmax, 30 mlp).",
    flag_values=FLAGS)
flags.DEFINE_float("learning_rate", None, "Initial SGD step (default: 0.5 softmax, 0.4 mlp).",
    flag_values=FLAGS)
flags.DEFINE_integer("local_batch_size", None, "Minibatch of the shards' SGD "
                     "(default: 50 softmax, 32 mlp).",
    flag_values=FLAGS)
flags.DEFINE_integer("num_shards", 4, "Shards trained in parallel per epoch.",
    flag_values=FLAGS)
flags.DEFINE_integer("hidden", 256, "Hidden units of --model=mlp.",
    flag_values=FLAGS)
flags.DEFINE_float("weight_decay", 0.0, "L2 decay on the weight matrices.",
    flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the initial weights, shards and shuffles.",
    flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "Folder with train-*-idx*-ubyte.gz "
                    "(default: the repository's data/mnist).",
    flag_values=FLAGS)
flags.DEFINE_string("output", None, "Model file to write (default: mnist_<model>.npz).",
    flag_values=FLAGS)
flags.DEFINE_string("accelerator", DEFAULT_ACCELERATOR,
                    "Resource hint of the training step; empty: none.",
    flag_values=FLAGS)
flags.DEFINE_bool("fake_gpu_when_none", True,
                  "On GpuRunner, give the hinted step a fake (testing) GPU when the "
                  "host has none, instead of failing.", flag_values=FLAGS)


def config_from_flags() -> TrainConfig:
    defaults = DEFAULTS[FLAGS.model]
    data_dir = FLAGS.data_dir or bundled.repo_train_dir()
    images, labels = bundled.split_paths(data_dir, "train")
    return TrainConfig(
        model=FLAGS.model,
        epochs=FLAGS.epochs if FLAGS.epochs is not None else int(defaults["epochs"]),
        learning_rate=FLAGS.learning_rate if FLAGS.learning_rate is not None
        else float(defaults["learning_rate"]),
        local_batch_size=FLAGS.local_batch_size if FLAGS.local_batch_size is not None
        else int(defaults["local_batch_size"]),
        num_shards=FLAGS.num_shards, hidden=FLAGS.hidden, weight_decay=FLAGS.weight_decay,
        seed=FLAGS.seed, train_images=images, train_labels=labels,
        output=FLAGS.output or "mnist_%s.npz" % FLAGS.model, runner=FLAGS.runner,
        accelerator=FLAGS.accelerator)


def parse_flags(argv: list[str]) -> list[str]:
    """absl parses its flags; everything else is kept for Beam."""
    return parse_known(FLAGS, argv, __doc__ or "")


def _main(argv: list[str]) -> None:
    logging.getLogger().setLevel(logging.INFO)
    try:
        summary = train(config_from_flags(), argv[1:],
                        fake_gpu_when_none=FLAGS.fake_gpu_when_none)
    except (RunnerUnavailableError, FileNotFoundError) as exc:
        sys.exit("mnist_train: %s" % exc)
    except KeyboardInterrupt as interrupt:   # GpuRunner cancelled the running epoch
        print("mnist_train: %s; no model written" % (
            "terminated" if isinstance(interrupt, interrupts.Terminated) else "interrupted"),
            file=sys.stderr, flush=True)
        sys.exit(interrupts.exit_code(interrupt))
    print("mnist_train: %s test accuracy %.2f%% (%d/%d); shards trained on %s"
          % (summary.output, 100 * summary.test.accuracy, summary.test.correct,
             summary.test.total, summary.devices()))


def main(argv: Optional[list[str]] = None) -> None:
    # SIGTERM stops training as Ctrl-C does (the running job is cancelled).
    with interrupts.sigterm_interrupts():
        app.run(_main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
