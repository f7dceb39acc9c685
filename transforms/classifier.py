"""Classifying pixel batches with a model file on one JAX device.

:class:`BatchClassifier` is what :class:`ClassifyMnist` and the RunInference
model handler share: parameters put on the device once with
``jax.device_put``, one jitted function, and a fixed batch shape (a partial
batch is padded with zeros, since each new shape would compile again).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Optional

import apache_beam as beam
import jax
import numpy as np

import beam_gpu_runner
from beam_gpu_runner.transforms.model import MnistModel, classify, load_model

_LOG = logging.getLogger(__name__)

METRICS_NAMESPACE = "beam_gpu_runner.mnist"


def device_label(device: Any) -> str:
    """``platform:id`` of a JAX device, e.g. ``cpu:0`` or ``gpu:2``."""
    return "%s:%d" % (device.platform, device.id)


def runtime_device() -> tuple[Any, Optional[str]]:
    """This worker's JAX device and worker id, from the runtime context.

    Looked up through ``beam_gpu_runner.runtime_context()`` each time (the
    runner sets the context per worker process); CPU when there is no GPU.
    """
    ctx = beam_gpu_runner.runtime_context()
    return ctx.jax_device(), ctx.worker_id


class BatchClassifier:
    """Predicted digits for uint8 [N, 784] pixels, in fixed-size device batches."""

    def __init__(self, model: MnistModel, device: Any, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError("BatchClassifier: batch_size must be >= 1, got %d" % batch_size)
        self.model = model
        self.device = device
        self.device_label = device_label(device)
        self.batch_size = batch_size
        self._params = jax.device_put(dict(model.params), device)
        self._fn = jax.jit(functools.partial(classify, scale=np.float32(model.scale)))
        self._images_counter = beam.metrics.Metrics.counter(
            METRICS_NAMESPACE, "images_on_%s" % self.device_label)
        # Compile now, once, for the one shape this classifier ever uses.
        self._run(np.zeros((batch_size, model.params_width()), np.uint8))
        _LOG.info("BatchClassifier: %s model %s on %s, batch %d",
                  model.kind, model.path, self.device_label, batch_size)

    @classmethod
    def from_file(cls, path: str, device: Any, batch_size: int) -> "BatchClassifier":
        return cls(load_model(path), device, batch_size)

    def _run(self, block: np.ndarray) -> np.ndarray:
        x = jax.device_put(block, self.device)
        return np.asarray(self._fn(self._params, x))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """int32 [N] predictions for uint8 [N, 784] images (any N >= 0)."""
        n = int(images.shape[0])
        out = np.empty((n,), np.int32)
        bs = self.batch_size
        for lo in range(0, n, bs):
            block = images[lo:lo + bs]
            m = block.shape[0]
            if m < bs:
                padded = np.zeros((bs,) + block.shape[1:], block.dtype)
                padded[:m] = block
                block = padded
            out[lo:lo + m] = self._run(block)[:m]
        self._images_counter.inc(n)
        return out


@dataclass(frozen=True)
class Evaluation:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def evaluate(model_path: str, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000, device: Any = None) -> Evaluation:
    """Offline evaluation of a model file (no Beam): how many it gets right."""
    dev = device if device is not None else jax.devices("cpu")[0]
    classifier = BatchClassifier.from_file(model_path, dev, batch_size)
    predictions = classifier(images)
    return Evaluation(correct=int(np.sum(predictions == labels.astype(np.int32))),
                      total=int(labels.shape[0]))
