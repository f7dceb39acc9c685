"""Real GPUs: mnist_train's shards train on their workers' CUDA devices.

Marked ``gpu`` and skipped on hosts without a usable NVIDIA GPU; the
testing-driver twin is tests/pipelines/test_mnist_train.py's
``test_shards_train_on_the_fake_gpus_of_their_workers``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_real_gpu import _gpu_names
from beam_gpu_runner.pipelines.mnist_train import TrainConfig, train
from beam_gpu_runner.transforms import bundled

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_leftover_workers")]


def test_mnist_train_shards_train_on_cuda(tmp_path: Path) -> None:
    names = _gpu_names()
    images, labels = bundled.split_paths(bundled.repo_train_dir(), "train")
    if not os.path.exists(images):
        pytest.skip("no source checkout with data/mnist")
    summary = train(TrainConfig(
        epochs=2, num_shards=2, local_batch_size=50, train_images=images,
        train_labels=labels, output=str(tmp_path / "m.npz"), limit=3000),
        ["--num_workers=1", "--lease_dir=%s" % tmp_path], fake_gpu_when_none=False)
    assert summary.test.accuracy > 0.8       # 87.04% for this configuration on CPU
    for log in summary.epochs:
        assert len(log.trained_on) == 2
        for where in log.trained_on:
            assert where.gpu_name in names, where
            assert where.jax_device.startswith("gpu:"), where   # JAX on the CUDA device
