"""Files that ship inside the package: the MNIST test set and the default model.

The MNIST database is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges,
under the Creative Commons Attribution-Share Alike 3.0 license (see
data/mnist/README.md in the repository). The training set is not installed: it
is read from the repository's data/mnist/ folder (or a ``--data_dir``).
"""
from __future__ import annotations

import os
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data"
_REPO = Path(__file__).resolve().parent.parent

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"


def data_dir() -> str:
    """The package's data folder (installed or in the source tree)."""
    return str(_DATA)


def test_images_path() -> str:
    return str(_DATA / "mnist" / TEST_IMAGES)


def test_labels_path() -> str:
    return str(_DATA / "mnist" / TEST_LABELS)


def default_model_path() -> str:
    """The one-layer softmax model trained by mnist_train (takes pixels/255)."""
    return str(_DATA / "models" / "mnist_softmax.npz")


def repo_train_dir() -> str:
    """data/mnist/ of a source checkout (the training files); may not exist."""
    return str(_REPO / "data" / "mnist")


def reference_model_path() -> str:
    """data/flink_mnist_reference/model.npz of a source checkout; may not exist."""
    return str(_REPO / "data" / "flink_mnist_reference" / "model.npz")


def split_paths(data_dir: str, split: str) -> tuple[str, str]:
    """(images, labels) of ``split`` ('train' or 't10k') in ``data_dir``.

    For 't10k' a folder without the files falls back to the bundled test set.
    """
    if split not in ("train", "t10k"):
        raise ValueError("split_paths: split must be 'train' or 't10k', got %r" % split)
    images = os.path.join(data_dir, "%s-images-idx3-ubyte.gz" % split)
    labels = os.path.join(data_dir, "%s-labels-idx1-ubyte.gz" % split)
    if split == "t10k" and not (os.path.exists(images) and os.path.exists(labels)):
        return test_images_path(), test_labels_path()
    return images, labels
