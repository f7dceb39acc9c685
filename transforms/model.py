"""The MNIST models as pure JAX functions, and their .npz files.

Two kinds:

* ``softmax``: one layer, ``logits = (x * scale) @ W + b``; W float32 [784, 10],
  b float32 [10] (optional: the Flink reference model has none).
* ``mlp``: one hidden ReLU layer, ``relu(x' @ W1 + b1) @ W2 + b2``.

Pixel scaling: ``x`` is always the raw uint8 pixels (0..255) row by row; the
model file records the factor it expects them multiplied by in a ``scale``
scalar. Our trained models take pixels/255 (``scale = 1/255``); a file without
``scale`` (the Flink reference: raw pixels, no bias) gets 1.0, so it loads and
scores unchanged.

Parameters are plain dicts of arrays (a JAX pytree); every function here is
pure and jittable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]

NUM_PIXELS = 784
NUM_CLASSES = 10
TRAINED_SCALE = 1.0 / 255.0
SOFTMAX_KEYS = ("W",)
MLP_KEYS = ("W1", "b1", "W2", "b2")


class ModelFileError(ValueError):
    """A model file is missing arrays or has the wrong shapes."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__("load_model: %s, array %r: %s" % (path, key, problem))

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (ModelFileError, (self.path, self.key, self.problem))


@dataclass(frozen=True)
class MnistModel:
    """A loaded model file: its kind, numpy parameters and pixel scale."""

    kind: str
    params: Mapping[str, np.ndarray]
    scale: float
    path: str = ""

    def params_width(self) -> int:
        """Pixels per image the model takes (784)."""
        first = self.params["W1"] if "W1" in self.params else self.params["W"]
        return int(first.shape[0])


def kind_of(params: Mapping[str, Any]) -> str:
    return "mlp" if "W1" in params else "softmax"


def init_softmax(key: jax.Array) -> Params:
    """Small random weights and a zero bias (key kept for a uniform API)."""
    return {
        "W": 0.01 * jax.random.normal(key, (NUM_PIXELS, NUM_CLASSES), jnp.float32),
        "b": jnp.zeros((NUM_CLASSES,), jnp.float32),
    }


def init_mlp(key: jax.Array, hidden: int = 256) -> Params:
    """He-initialised hidden layer and a small output layer."""
    k1, k2 = jax.random.split(key)
    return {
        "W1": jax.random.normal(k1, (NUM_PIXELS, hidden), jnp.float32)
        * jnp.sqrt(2.0 / NUM_PIXELS),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "W2": 0.01 * jax.random.normal(k2, (hidden, NUM_CLASSES), jnp.float32),
        "b2": jnp.zeros((NUM_CLASSES,), jnp.float32),
    }


def init(kind: str, key: jax.Array, hidden: int = 256) -> Params:
    if kind == "softmax":
        return init_softmax(key)
    if kind == "mlp":
        return init_mlp(key, hidden)
    raise ValueError("init: model kind must be 'softmax' or 'mlp', got %r" % kind)


def predict(params: Params, pixels: jax.Array, scale: float | jax.Array) -> jax.Array:
    """Logits [B, 10] for raw pixels [B, 784] (any dtype, 0..255)."""
    x = pixels.astype(jnp.float32) * scale
    if "W1" in params:
        h = jax.nn.relu(x @ params["W1"] + params["b1"])
        return h @ params["W2"] + params["b2"]
    logits = x @ params["W"]
    if "b" in params:
        logits = logits + params["b"]
    return logits


def classify(params: Params, pixels: jax.Array, scale: float | jax.Array) -> jax.Array:
    """Predicted digits [B] (int32)."""
    return jnp.argmax(predict(params, pixels, scale), axis=-1).astype(jnp.int32)


def loss(params: Params, pixels: jax.Array, labels: jax.Array,
         scale: float | jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the batch."""
    logits = predict(params, pixels, scale)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1)
    return -jnp.mean(picked)


def accuracy(params: Params, pixels: jax.Array, labels: jax.Array,
             scale: float | jax.Array) -> jax.Array:
    """Fraction of the batch classified right."""
    return jnp.mean(classify(params, pixels, scale) == labels.astype(jnp.int32))


def sgd_step(params: Params, pixels: jax.Array, labels: jax.Array,
             scale: float | jax.Array, learning_rate: float | jax.Array,
             weight_decay: float | jax.Array = 0.0) -> Params:
    """One gradient-descent step on the batch's loss.

    ``weight_decay`` adds L2 decay to the weight matrices (not the biases).
    """
    grads = jax.grad(loss)(params, pixels, labels, scale)
    return {
        k: p - learning_rate * (grads[k] + (weight_decay * p if k.startswith("W") else 0.0))
        for k, p in params.items()}


def save_model(path: str, params: Mapping[str, Any], scale: float) -> None:
    """Write ``params`` and ``scale`` to ``path`` (.npz) atomically."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".%s.tmp-%d.npz" % (os.path.basename(path), os.getpid()))
    arrays["scale"] = np.asarray(np.float32(scale))
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def _check(path: str, params: Mapping[str, np.ndarray]) -> None:
    if "W1" in params:
        missing = [k for k in MLP_KEYS if k not in params]
        if missing:
            raise ModelFileError(path, missing[0], "missing (an MLP needs W1, b1, W2, b2)")
        hidden = params["W1"].shape[-1]
        shapes = {"W1": (NUM_PIXELS, hidden), "b1": (hidden,),
                  "W2": (hidden, NUM_CLASSES), "b2": (NUM_CLASSES,)}
    else:
        if "W" not in params:
            raise ModelFileError(path, "W", "missing (a softmax model needs W, optional b)")
        shapes = {"W": (NUM_PIXELS, NUM_CLASSES), "b": (NUM_CLASSES,)}
    for key, shape in shapes.items():
        if key in params and params[key].shape != shape:
            raise ModelFileError(path, key, "shape %s, expected %s" % (params[key].shape, shape))


def load_model(path: str) -> MnistModel:
    """Read a model .npz; ``scale`` defaults to 1.0 (raw pixels) when absent."""
    with np.load(path) as npz:
        arrays = {k: np.asarray(npz[k]) for k in npz.files}
    scale = float(arrays.pop("scale", np.float32(1.0)))
    # Only the parameter arrays; anything else in the file is ignored.
    params = {k: v.astype(np.float32) for k, v in arrays.items()
              if k in SOFTMAX_KEYS + ("b",) + MLP_KEYS}
    _check(path, params)
    return MnistModel(kind=kind_of(params), params=params, scale=scale, path=path)
