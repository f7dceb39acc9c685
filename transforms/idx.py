"""Reading the IDX files of MNIST (gzipped or raw), vectorized with numpy.

The IDX layout: a big-endian header, ``magic`` (2051 for images, 2049 for
labels), the item count, then for images the rows and columns, then one
unsigned byte per pixel or label. Every check names the file, the byte offset
and what was expected, in an :class:`IdxFormatError`.
"""
from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from typing import Union

import numpy as np

_LOG = logging.getLogger(__name__)

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
MNIST_ROWS = 28
MNIST_COLS = 28

PathLike = Union[str, "os.PathLike[str]"]


class IdxFormatError(ValueError):
    """A file is not the IDX file it should be.

    Carries the path, the byte offset of the problem and what was expected;
    pickles (Beam ships exceptions between processes).
    """

    def __init__(self, path: str, offset: int, expected: str, found: str) -> None:
        self.path = path
        self.offset = offset
        self.expected = expected
        self.found = found
        super().__init__(
            "read_idx: %s at byte %d: expected %s, found %s"
            % (path, offset, expected, found))

    def __reduce__(self) -> tuple[type, tuple[str, int, str, str]]:
        return (IdxFormatError, (self.path, self.offset, self.expected, self.found))


@dataclass(frozen=True)
class MnistData:
    """Images as uint8 [N, 784] (row by row) and labels as uint8 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:  # type: ignore[operator]
            return f.read()  # type: ignore[no-any-return]
    except (OSError, EOFError) as exc:  # truncated or corrupt gzip stream
        raise IdxFormatError(path, 0, "a readable gzip stream", repr(exc)) from exc


def _header(path: str, data: bytes, magic: int, ndims: int) -> tuple[int, ...]:
    need = 4 * (1 + ndims)
    if len(data) >= 4:
        found = int(np.frombuffer(data, dtype=">u4", count=1)[0])
        if found != magic:
            raise IdxFormatError(path, 0, "magic number %d" % magic, "%d" % found)
    if len(data) < need:
        raise IdxFormatError(path, len(data), "a %d-byte IDX header" % need,
                             "end of file after %d bytes" % len(data))
    fields = np.frombuffer(data, dtype=">u4", count=1 + ndims)
    return tuple(int(v) for v in fields[1:])


def _payload(path: str, data: bytes, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64))
    have = len(data) - offset
    if have != size:
        what = "truncated: %d bytes" % have if have < size else "%d extra bytes" % (have - size)
        raise IdxFormatError(path, offset + min(have, size),
                             "%d data bytes for shape %s" % (size, shape), what)
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def read_images(path: PathLike, rows: int = MNIST_ROWS, cols: int = MNIST_COLS) -> np.ndarray:
    """The images of an IDX3 file as uint8 [N, rows*cols] (read-only view)."""
    p = os.fspath(path)
    data = _read_bytes(p)
    count, r, c = _header(p, data, IMAGES_MAGIC, 3)
    if (r, c) != (rows, cols):
        raise IdxFormatError(p, 8, "image size %dx%d" % (rows, cols), "%dx%d" % (r, c))
    return _payload(p, data, 16, (count, r * c))


def read_labels(path: PathLike) -> np.ndarray:
    """The labels of an IDX1 file as uint8 [N], each checked to be 0..9."""
    p = os.fspath(path)
    data = _read_bytes(p)
    (count,) = _header(p, data, LABELS_MAGIC, 1)
    labels = _payload(p, data, 8, (count,))
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise IdxFormatError(p, 8 + int(bad[0]), "a digit label 0..9",
                             "%d" % int(labels[bad[0]]))
    return labels


def read_mnist(images_path: PathLike, labels_path: PathLike) -> MnistData:
    """Images and labels of one split, checked to have the same count."""
    images = read_images(images_path)
    labels = read_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            os.fspath(labels_path), 4,
            "%d labels (as many as images in %s)" % (images.shape[0], os.fspath(images_path)),
            "%d" % labels.shape[0])
    _LOG.debug("read_mnist: %d images from %s", images.shape[0], images_path)
    return MnistData(images=images, labels=labels)


_CACHE: dict[tuple[str, str], MnistData] = {}


def read_mnist_cached(images_path: PathLike, labels_path: PathLike) -> MnistData:
    """:func:`read_mnist`, read once per process (DoFns on one worker share it)."""
    key = (os.path.abspath(os.fspath(images_path)), os.path.abspath(os.fspath(labels_path)))
    data = _CACHE.get(key)
    if data is None:
        data = read_mnist(*key)
        _CACHE[key] = data
    return data
