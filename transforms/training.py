"""Data-parallel training in Beam: local SGD on shards, averaged per epoch.

One epoch is one small Beam graph (:class:`TrainEpoch`): the current
parameters go in as a side input; a ParDo runs plain minibatch SGD on each
shard of the training set (shards are a fixed random partition), starting
from those parameters; a ``CombineGlobally`` averages the shard models
weighted by their example counts (federated averaging / parameter averaging)
and sums the loss and accuracy that the *incoming* model has on each shard.
The driver (pipelines/mnist_train.py) runs one epoch after the other.

The training step can carry an accelerator hint: each shard then trains on
its GPU worker's device, read from ``beam_gpu_runner.runtime_context()``
(parameters and data placed there with ``jax.device_put``, so the jitted
step runs there), and says where it ran (:class:`ShardDevice`).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional

import apache_beam as beam
import jax
import jax.numpy as jnp
import numpy as np

import beam_gpu_runner
from beam_gpu_runner.transforms import model as mnist_model
from beam_gpu_runner.transforms.classifier import device_label
from beam_gpu_runner.transforms.idx import MnistData, read_mnist_cached

_LOG = logging.getLogger(__name__)

NpParams = dict[str, np.ndarray]


@dataclass(frozen=True)
class ShardTask:
    """What one shard does in one epoch."""

    index: int
    num_shards: int
    epoch: int
    seed: int
    learning_rate: float
    batch_size: int
    weight_decay: float = 0.0


@dataclass(frozen=True)
class ShardDevice:
    """Where one shard trained: its worker, the worker's GPU as the runtime
    context describes it (the driver's index, uuid and name; None on a worker
    without one) and the JAX device it computed on."""

    shard: int
    worker_id: Optional[str]
    gpu_index: Optional[str]
    gpu_uuid: Optional[str]
    gpu_name: Optional[str]
    jax_device: str

    def label(self) -> str:
        """``GPU 1 (<uuid>, <name>) as JAX gpu:0``, or ``JAX cpu:0`` without a GPU."""
        if self.gpu_index is None:
            return "JAX %s" % self.jax_device
        return "GPU %s (%s, %s) as JAX %s" % (self.gpu_index, self.gpu_uuid, self.gpu_name,
                                              self.jax_device)


@dataclass(frozen=True)
class ShardUpdate:
    """A shard's trained parameters and the incoming model's stats on the shard."""

    params: Mapping[str, np.ndarray]
    examples: int
    loss_sum: float
    correct: int
    trained_on: Optional[ShardDevice] = None


@dataclass(frozen=True)
class EpochResult:
    """The averaged parameters and the incoming model's training loss/accuracy."""

    params: Mapping[str, np.ndarray]
    examples: int
    loss: float
    accuracy: float
    #: Where each shard trained, by shard index.
    trained_on: tuple[ShardDevice, ...] = ()


def shard_rows(n: int, task: ShardTask) -> np.ndarray:
    """Rows of this shard, shuffled for this epoch.

    Shards are a fixed random partition of ``range(n)`` (seeded by ``seed``);
    the order inside a shard changes every epoch.
    """
    partition = np.random.default_rng(task.seed).permutation(n)[task.index::task.num_shards]
    return np.random.default_rng((task.seed, task.epoch, task.index)).permutation(partition)


@jax.jit
def _local_sgd(params: mnist_model.Params, xs: jax.Array, ys: jax.Array, scale: jax.Array,
               learning_rate: jax.Array, weight_decay: jax.Array) -> mnist_model.Params:
    def step(p: mnist_model.Params, batch: tuple[jax.Array, jax.Array]
             ) -> tuple[mnist_model.Params, None]:
        return mnist_model.sgd_step(p, batch[0], batch[1], scale, learning_rate,
                                    weight_decay), None
    trained, _ = jax.lax.scan(step, params, (xs, ys))
    return trained


@jax.jit
def _stats(params: mnist_model.Params, x: jax.Array, y: jax.Array,
           scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = mnist_model.predict(params, x, scale)
    logp = jax.nn.log_softmax(logits, axis=-1)
    loss_sum = -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1))
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == y)
    return loss_sum, correct


def train_shard(params: Mapping[str, np.ndarray], data: MnistData, task: ShardTask,
                scale: float, device: Any = None) -> ShardUpdate:
    """Plain minibatch SGD over one shard for one epoch (no Beam)."""
    rows = shard_rows(len(data), task)
    steps = len(rows) // task.batch_size
    if steps < 1:
        raise ValueError("train_shard: shard %d has %d images, fewer than batch_size %d"
                         % (task.index, len(rows), task.batch_size))
    x = data.images[rows]
    y = data.labels[rows].astype(np.int32)
    dev = device if device is not None else jax.devices("cpu")[0]
    p = jax.device_put(dict(params), dev)
    s = jnp.float32(scale)
    loss_sum, correct = _stats(p, jax.device_put(x, dev), jax.device_put(y, dev), s)
    used = steps * task.batch_size
    xs = x[:used].reshape(steps, task.batch_size, -1)
    ys = y[:used].reshape(steps, task.batch_size)
    trained = _local_sgd(p, jax.device_put(xs, dev), jax.device_put(ys, dev), s,
                         jnp.float32(task.learning_rate), jnp.float32(task.weight_decay))
    return ShardUpdate(params={k: np.asarray(v) for k, v in trained.items()},
                       examples=len(rows), loss_sum=float(loss_sum), correct=int(correct))


class LocalSgdFn(beam.DoFn):
    """ShardTask (+ params side input) -> ShardUpdate, on the worker's device.

    The device is the worker's first GPU from ``beam_gpu_runner.runtime_context()``
    as JAX sees it (``ctx.jax_device()``: the CPU when the worker has no GPU,
    or when JAX has no GPU backend, as with the testing driver's fakes). Each
    update says where it trained (``ShardUpdate.trained_on``).
    """

    def __init__(self, images_path: str, labels_path: str, scale: float) -> None:
        self._images_path = images_path
        self._labels_path = labels_path
        self._scale = scale
        self._data: Optional[MnistData] = None
        self._device: Any = None
        self._where: Optional[ShardDevice] = None

    def setup(self) -> None:
        self._data = read_mnist_cached(self._images_path, self._labels_path)
        ctx = beam_gpu_runner.runtime_context()
        self._device = ctx.jax_device()
        gpus = ctx.gpus()
        gpu = gpus[0] if gpus else None
        self._where = ShardDevice(
            shard=-1, worker_id=ctx.worker_id,
            gpu_index=gpu.get_property("index") if gpu else None,
            gpu_uuid=gpu.get_property("uuid") if gpu else None,
            gpu_name=gpu.get_property("name") if gpu else None,
            jax_device=device_label(self._device))
        _LOG.info("LocalSgdFn: worker %s trains its shards on %s", ctx.worker_id,
                  self._where.label())

    def process(self, keyed: tuple[int, Iterable[ShardTask]],
                params: Mapping[str, np.ndarray]) -> Iterator[ShardUpdate]:
        assert self._data is not None and self._where is not None, "setup() not called"
        for task in keyed[1]:
            update = train_shard(params, self._data, task, self._scale, self._device)
            yield dataclasses.replace(
                update, trained_on=dataclasses.replace(self._where, shard=task.index))


@dataclass(frozen=True)
class _Sums:
    weighted: Optional[Mapping[str, np.ndarray]] = None
    examples: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    trained_on: tuple[ShardDevice, ...] = ()

    def plus(self, other: "_Sums") -> "_Sums":
        if self.weighted is None:
            return other
        if other.weighted is None:
            return self
        return _Sums({k: self.weighted[k] + other.weighted[k] for k in self.weighted},
                     self.examples + other.examples, self.loss_sum + other.loss_sum,
                     self.correct + other.correct, self.trained_on + other.trained_on)


class AverageUpdatesFn(beam.CombineFn):
    """ShardUpdates -> EpochResult: example-weighted mean of the parameters."""

    def create_accumulator(self) -> _Sums:
        return _Sums()

    def add_input(self, acc: _Sums, update: ShardUpdate) -> _Sums:
        weighted = {k: v.astype(np.float64) * update.examples for k, v in update.params.items()}
        where = (update.trained_on,) if update.trained_on is not None else ()
        return acc.plus(_Sums(weighted, update.examples, update.loss_sum, update.correct,
                              where))

    def merge_accumulators(self, accs: Iterable[_Sums]) -> _Sums:
        total = _Sums()
        for acc in accs:
            total = total.plus(acc)
        return total

    def extract_output(self, acc: _Sums) -> Optional[EpochResult]:
        if acc.weighted is None or acc.examples == 0:
            return None
        return EpochResult(
            params={k: (v / acc.examples).astype(np.float32) for k, v in acc.weighted.items()},
            examples=acc.examples, loss=acc.loss_sum / acc.examples,
            accuracy=acc.correct / acc.examples,
            trained_on=tuple(sorted(acc.trained_on, key=lambda where: where.shard)))


class TrainEpoch(beam.PTransform):
    """PBegin -> one EpochResult: local SGD on every shard, then the average.

    ``accelerator``: the training step's accelerator resource hint (e.g.
    ``type:nvidia;count:1``: each shard on a GPU worker); empty: no hint.
    """

    def __init__(self, params: Mapping[str, np.ndarray], tasks: list[ShardTask],
                 images_path: str, labels_path: str, scale: float,
                 accelerator: str = "") -> None:
        super().__init__()
        self._params = {k: np.asarray(v, np.float32) for k, v in params.items()}
        self._tasks = tasks
        self._images_path = images_path
        self._labels_path = labels_path
        self._scale = scale
        self._accelerator = accelerator

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        params = pbegin | "Params" >> beam.Create([self._params])
        train: beam.PTransform = beam.ParDo(
            LocalSgdFn(self._images_path, self._labels_path, self._scale),
            params=beam.pvalue.AsSingleton(params))
        if self._accelerator:
            train = train.with_resource_hints(accelerator=self._accelerator)
        # Keyed by shard and grouped (not Reshuffle'd): the training step
        # reads the shuffle itself, so the runner hands shards to its workers.
        return (pbegin
                | "Shards" >> beam.Create([(task.index, task) for task in self._tasks])
                | "Spread" >> beam.GroupByKey()
                | "LocalSgd" >> train
                | "Average" >> beam.CombineGlobally(AverageUpdatesFn()))
