"""The IDX reader: the bundled files, and every way a file can be wrong."""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms.idx import (
    IdxFormatError, MnistData, read_images, read_labels, read_mnist)

# From data/mnist/README.md.
UNCOMPRESSED_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _md5_of_gz(path: str) -> str:
    with gzip.open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def test_bundled_test_set_checksums() -> None:
    for path in (bundled.test_images_path(), bundled.test_labels_path()):
        assert _md5_of_gz(path) == UNCOMPRESSED_MD5[os.path.basename(path)], path


def test_bundled_test_set_contents(test_set: MnistData) -> None:
    assert test_set.images.shape == (10000, 784)
    assert test_set.images.dtype == np.uint8
    assert test_set.labels.tolist()[:10] == FIRST_TEST_LABELS
    assert np.bincount(test_set.labels, minlength=10).tolist() == TEST_LABEL_COUNTS


def test_training_set_in_checkout() -> None:
    images, labels = bundled.split_paths(bundled.repo_train_dir(), "train")
    if not os.path.exists(images):
        pytest.skip("no source checkout with data/mnist")
    for path in (images, labels):
        assert _md5_of_gz(path) == UNCOMPRESSED_MD5[os.path.basename(path)], path
    data = read_mnist(images, labels)
    assert data.images.shape == (60000, 784)
    assert data.labels.tolist()[:10] == FIRST_TRAIN_LABELS


def _images_bytes(count: int = 3, rows: int = 28, cols: int = 28,
                  magic: int = 2051, payload: int | None = None) -> bytes:
    header = np.array([magic, count, rows, cols], ">u4").tobytes()
    n = count * rows * cols if payload is None else payload
    return header + (np.arange(n) % 256).astype(np.uint8).tobytes()


def _labels_bytes(labels: list[int], magic: int = 2049) -> bytes:
    return np.array([magic, len(labels)], ">u4").tobytes() + bytes(labels)


def _write(path: Path, data: bytes, gz: bool = False) -> str:
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_reads_raw_and_gzip(tmp_path: Path, gz: bool) -> None:
    images = _write(tmp_path / "i", _images_bytes(3), gz)
    labels = _write(tmp_path / "l", _labels_bytes([3, 1, 4]), gz)
    data = read_mnist(images, labels)
    assert data.images.shape == (3, 784)
    assert data.images[1, 0] == (784 % 256)
    assert data.labels.tolist() == [3, 1, 4]
    assert len(data) == 3


def _expect_error(call: object, path: str, offset: int, expected: str) -> IdxFormatError:
    with pytest.raises(IdxFormatError) as info:
        call()  # type: ignore[operator]
    err = info.value
    assert err.path == path
    assert err.offset == offset
    assert expected in err.expected
    assert path in str(err) and ("byte %d" % offset) in str(err)
    assert isinstance(err, ValueError)
    return err


def test_wrong_magic(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels-as-images", _labels_bytes([1, 2]))
    err = _expect_error(lambda: read_images(path), path, 0, "magic number 2051")
    assert err.found == "2049"
    images = _write(tmp_path / "images", _images_bytes(2))
    _expect_error(lambda: read_labels(images), images, 0, "magic number 2049")


def test_wrong_dimensions(tmp_path: Path) -> None:
    path = _write(tmp_path / "i", _images_bytes(2, rows=27, cols=28))
    err = _expect_error(lambda: read_images(path), path, 8, "image size 28x28")
    assert err.found == "27x28"


def test_truncated_payload(tmp_path: Path) -> None:
    path = _write(tmp_path / "i", _images_bytes(3, payload=3 * 784 - 10), gz=True)
    err = _expect_error(lambda: read_images(path), path, 16 + 3 * 784 - 10,
                        "2352 data bytes")
    assert "truncated" in err.found


def test_extra_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "l", _labels_bytes([1, 2]) + b"\x00")
    err = _expect_error(lambda: read_labels(path), path, 10, "2 data bytes")
    assert "1 extra bytes" in err.found


def test_truncated_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "i", _images_bytes(1)[:9])
    _expect_error(lambda: read_images(path), path, 9, "16-byte IDX header")


def test_corrupt_gzip(tmp_path: Path) -> None:
    whole = gzip.compress(_images_bytes(5))
    path = _write(tmp_path / "i.gz", whole[: len(whole) // 2])
    _expect_error(lambda: read_images(path), path, 0, "readable gzip stream")


def test_label_out_of_range(tmp_path: Path) -> None:
    path = _write(tmp_path / "l", _labels_bytes([1, 12, 3]))
    err = _expect_error(lambda: read_labels(path), path, 9, "digit label")
    assert err.found == "12"


def test_count_mismatch(tmp_path: Path) -> None:
    images = _write(tmp_path / "i", _images_bytes(3))
    labels = _write(tmp_path / "l", _labels_bytes([1, 2]))
    err = _expect_error(lambda: read_mnist(images, labels), labels, 4, "3 labels")
    assert images in err.expected


def test_error_pickles() -> None:
    err = IdxFormatError("/x/y.gz", 16, "2352 data bytes", "truncated: 7 bytes")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is IdxFormatError
    assert (back.path, back.offset, back.expected, back.found) == (
        err.path, err.offset, err.expected, err.found)
    assert str(back) == str(err)
