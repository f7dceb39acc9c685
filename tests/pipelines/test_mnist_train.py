"""The training pipeline: data-parallel local SGD on Beam."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from beam_gpu_runner.pipelines import mnist_train
from beam_gpu_runner.pipelines.mnist_train import TrainConfig, train
from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms import model as M
from beam_gpu_runner.transforms.training import (
    AverageUpdatesFn, ShardTask, ShardUpdate, shard_rows)

TRAIN_IMAGES, TRAIN_LABELS = bundled.split_paths(bundled.repo_train_dir(), "train")
needs_training_set = pytest.mark.skipif(
    not os.path.exists(TRAIN_IMAGES), reason="no source checkout with data/mnist")


def test_shards_partition_the_rows() -> None:
    tasks = [ShardTask(i, 3, epoch=0, seed=5, learning_rate=0.1, batch_size=10)
             for i in range(3)]
    rows = [shard_rows(100, t) for t in tasks]
    assert sorted(np.concatenate(rows).tolist()) == list(range(100))
    later = shard_rows(100, ShardTask(0, 3, epoch=1, seed=5, learning_rate=0.1, batch_size=10))
    assert sorted(later.tolist()) == sorted(rows[0].tolist())  # same shard, new order
    assert later.tolist() != rows[0].tolist()


def test_average_is_weighted_by_examples() -> None:
    fn = AverageUpdatesFn()
    a = fn.add_input(fn.create_accumulator(), ShardUpdate(
        {"W": np.full((2,), 1.0, np.float32)}, examples=1, loss_sum=2.0, correct=1))
    b = fn.add_input(fn.create_accumulator(), ShardUpdate(
        {"W": np.full((2,), 4.0, np.float32)}, examples=3, loss_sum=2.0, correct=2))
    out = fn.extract_output(fn.merge_accumulators([a, fn.create_accumulator(), b]))
    assert out is not None
    np.testing.assert_allclose(out.params["W"], [3.25, 3.25])
    assert (out.examples, out.loss, out.accuracy) == (4, 1.0, 0.75)
    assert fn.extract_output(fn.create_accumulator()) is None


@needs_training_set
@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_short_training_learns(kind: str, beam_runner: str, tmp_path: Path) -> None:
    output = str(tmp_path / ("%s.npz" % kind))
    summary = train(TrainConfig(
        model=kind, epochs=2, learning_rate=0.5 if kind == "softmax" else 0.2,
        local_batch_size=50, num_shards=2, hidden=32, train_images=TRAIN_IMAGES,
        train_labels=TRAIN_LABELS, output=output, runner=beam_runner, limit=3000))
    first, second = summary.epochs
    assert second.train_loss < first.train_loss
    assert summary.test.total == 10000 and summary.test.accuracy > 0.7
    model = M.load_model(output)
    assert model.kind == kind
    assert model.scale == pytest.approx(M.TRAINED_SCALE)


def test_missing_training_files_are_named(beam_runner: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope-images.gz")
    with pytest.raises(FileNotFoundError, match="nope-images.gz"):
        train(TrainConfig(train_images=missing, train_labels=missing, runner=beam_runner))


def test_flags_pass_unknown_arguments_to_beam() -> None:
    rest = mnist_train.parse_flags(
        ["mnist_train", "--model=mlp", "--num_shards=2", "--direct_num_workers=2"])
    assert rest == ["mnist_train", "--direct_num_workers=2"]
    config = mnist_train.config_from_flags()
    assert (config.model, config.num_shards, config.epochs, config.learning_rate) == (
        "mlp", 2, 30, 0.4)
    assert config.output == "mnist_mlp.npz"


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig(model="cnn")
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        TrainConfig(epochs=0)


@pytest.mark.slow
@needs_training_set
def test_full_softmax_training_reaches_92_5(beam_runner: str, tmp_path: Path) -> None:
    summary = train(TrainConfig(train_images=TRAIN_IMAGES, train_labels=TRAIN_LABELS,
                                output=str(tmp_path / "m.npz"), runner=beam_runner))
    assert summary.test.accuracy >= 0.925
