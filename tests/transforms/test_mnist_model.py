"""The JAX model functions, model files and offline evaluation."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import jax
import numpy as np
import pytest

from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms import model as M
from beam_gpu_runner.transforms.classifier import BatchClassifier, evaluate
from beam_gpu_runner.transforms.idx import MnistData

CPU = jax.devices("cpu")[0]


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_shapes(kind: str, test_set: MnistData) -> None:
    params = M.init(kind, jax.random.PRNGKey(0), hidden=32)
    x = test_set.images[:5]
    assert M.predict(params, x, M.TRAINED_SCALE).shape == (5, 10)
    assert M.classify(params, x, M.TRAINED_SCALE).dtype == np.int32
    assert M.loss(params, x, test_set.labels[:5], M.TRAINED_SCALE).shape == ()
    assert 0.0 <= float(M.accuracy(params, x, test_set.labels[:5], M.TRAINED_SCALE)) <= 1.0
    assert M.kind_of(params) == kind


def test_init_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'cnn'"):
        M.init("cnn", jax.random.PRNGKey(0))


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_loss_decreases_after_a_step(kind: str, test_set: MnistData) -> None:
    params = M.init(kind, jax.random.PRNGKey(1), hidden=32)
    x, y = test_set.images[:256], test_set.labels[:256]
    before = float(M.loss(params, x, y, M.TRAINED_SCALE))
    after = float(M.loss(M.sgd_step(params, x, y, M.TRAINED_SCALE, 0.1), x, y,
                         M.TRAINED_SCALE))
    assert after < before


def test_reference_model_loads_raw_pixels_without_bias(reference_model: str) -> None:
    model = M.load_model(reference_model)
    assert model.kind == "softmax"
    assert model.scale == 1.0
    assert set(model.params) == {"W"}
    assert model.params["W"].shape == (784, 10)


def test_reference_model_scores_9214(reference_model: str, test_set: MnistData,
                                     reference_predictions: np.ndarray) -> None:
    assert int(np.sum(reference_predictions == test_set.labels)) == 9214
    result = evaluate(reference_model, test_set.images, test_set.labels)
    assert (result.correct, result.total) == (9214, 10000)
    assert result.accuracy == pytest.approx(0.9214)


def test_predictions_do_not_depend_on_batch_size(reference_model: str, test_set: MnistData,
                                                 reference_predictions: np.ndarray) -> None:
    # Streaming and offline evaluation use different batch sizes; they must agree.
    for batch_size in (7, 100, 1000, 10000):
        classifier = BatchClassifier.from_file(reference_model, CPU, batch_size)
        np.testing.assert_array_equal(classifier(test_set.images), reference_predictions)


def test_classifier_handles_empty_and_partial_input(reference_model: str,
                                                    test_set: MnistData,
                                                    reference_predictions: np.ndarray) -> None:
    classifier = BatchClassifier.from_file(reference_model, CPU, 64)
    assert classifier(test_set.images[:0]).shape == (0,)
    np.testing.assert_array_equal(classifier(test_set.images[:65]), reference_predictions[:65])
    assert classifier.device_label == "cpu:0"


def test_default_model_is_bundled_and_accurate(test_set: MnistData) -> None:
    path = bundled.default_model_path()
    assert os.path.exists(path)
    model = M.load_model(path)
    assert model.kind == "softmax"
    assert model.scale == pytest.approx(1 / 255)
    assert set(model.params) == {"W", "b"}
    assert evaluate(path, test_set.images, test_set.labels).accuracy >= 0.925


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_save_load_round_trip(kind: str, tmp_path: Path, test_set: MnistData) -> None:
    params = M.init(kind, jax.random.PRNGKey(2), hidden=16)
    path = str(tmp_path / "m.npz")
    M.save_model(path, params, M.TRAINED_SCALE)
    model = M.load_model(path)
    assert model.kind == kind
    assert model.scale == pytest.approx(M.TRAINED_SCALE)
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left
    np.testing.assert_array_equal(
        M.classify(dict(model.params), test_set.images[:50], model.scale),
        M.classify(params, test_set.images[:50], M.TRAINED_SCALE))


def test_bad_model_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.npz")
    np.savez(missing, V=np.zeros((784, 10), np.float32))
    with pytest.raises(M.ModelFileError, match="'W'"):
        M.load_model(missing)
    wrong = str(tmp_path / "wrong.npz")
    np.savez(wrong, W=np.zeros((10, 784), np.float32))
    with pytest.raises(M.ModelFileError, match=r"shape \(10, 784\), expected \(784, 10\)"):
        M.load_model(wrong)
    mlp = str(tmp_path / "mlp.npz")
    np.savez(mlp, W1=np.zeros((784, 8), np.float32), b1=np.zeros(8, np.float32))
    with pytest.raises(M.ModelFileError, match="'W2'"):
        M.load_model(mlp)


def test_model_file_error_pickles() -> None:
    err = M.ModelFileError("/m.npz", "W", "missing")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.key, back.problem, str(back)) == (
        err.path, err.key, err.problem, str(err))
