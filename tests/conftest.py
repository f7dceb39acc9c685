"""Fixtures shared by all test folders."""
from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

from beam_gpu_runner.placement.warm import WARM
from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms.idx import MnistData, read_mnist_cached


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def no_leftover_workers():
    """Fails the test if worker processes outlive it (idle workers parked for
    the next job are ended first: they outlive jobs by design)."""
    before = {p.pid for p in _children()}
    yield
    WARM.retire_all()
    deadline = time.monotonic() + 10
    left = [p for p in _children() if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in _children() if p.pid not in before]
    assert not left, "worker processes left behind: %s" % [
        (p.pid, " ".join(p.cmdline()[:4])) for p in left]


# -- MNIST fixtures (tests/transforms, tests/pipelines) -------------------------
# Pipelines there run on ``FnApiRunner``: the in-memory engine Beam's DirectRunner
# uses for batch pipelines, named directly so that DirectRunner does not first
# try to download and start Prism. It runs DoFns in this process, so
# monkeypatched environment variables reach them.

@pytest.fixture(scope="session")
def beam_runner() -> str:
    return "FnApiRunner"


@pytest.fixture(scope="session")
def test_set() -> MnistData:
    return read_mnist_cached(bundled.test_images_path(), bundled.test_labels_path())


@pytest.fixture(scope="session")
def reference_model() -> str:
    path = bundled.reference_model_path()
    if not os.path.exists(path):
        pytest.skip("no source checkout: %s is missing" % path)
    return path


@pytest.fixture(scope="session")
def reference_predictions(test_set: MnistData, reference_model: str) -> np.ndarray:
    """The reference model's predictions, computed with numpy in float64."""
    weights = np.load(reference_model)["W"].astype(np.float64)
    return np.argmax(test_set.images.astype(np.float64) @ weights, axis=1)
