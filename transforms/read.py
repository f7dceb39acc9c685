"""Beam transforms that read MNIST IDX files into batches or single images."""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import apache_beam as beam
import numpy as np

from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms.batch import ImageBatch, MnistImage
from beam_gpu_runner.transforms.idx import MnistData, read_labels, read_mnist_cached

_LOG = logging.getLogger(__name__)


class _SliceBatches(beam.DoFn):
    """(start, stop) -> one ImageBatch of those images (file read once per process)."""

    def __init__(self, images_path: str, labels_path: str) -> None:
        self._images_path = images_path
        self._labels_path = labels_path
        self._data: Optional[MnistData] = None

    def setup(self) -> None:
        self._data = read_mnist_cached(self._images_path, self._labels_path)

    def process(self, span: tuple[int, int]) -> Iterator[ImageBatch]:
        assert self._data is not None, "setup() not called"
        start, stop = span
        yield ImageBatch(
            start=start,
            images=np.array(self._data.images[start:stop]),
            labels=self._data.labels[start:stop].astype(np.int32))


class ReadMnistBatches(beam.PTransform):
    """Read an IDX image/label file pair as :class:`ImageBatch` elements.

    Batches hold ``batch_size`` consecutive images (the last one fewer); the
    defaults are the bundled test set. ``limit`` reads only the first images.
    """

    def __init__(self, images_path: Optional[str] = None,
                 labels_path: Optional[str] = None,
                 batch_size: int = 100, limit: Optional[int] = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("ReadMnistBatches: batch_size must be >= 1, got %d" % batch_size)
        self._images_path = images_path or bundled.test_images_path()
        self._labels_path = labels_path or bundled.test_labels_path()
        self._batch_size = batch_size
        self._limit = limit

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        # The label file is small: read it here to know how many batches to make
        # (and to fail at construction on a bad file, naming it).
        count = int(read_labels(self._labels_path).shape[0])
        if self._limit is not None:
            count = min(count, self._limit)
        spans = [(s, min(s + self._batch_size, count))
                 for s in range(0, count, self._batch_size)]
        _LOG.info("ReadMnistBatches: %d images from %s in %d batches",
                  count, self._images_path, len(spans))
        return (pbegin
                | "Spans" >> beam.Create(spans)
                | "Slice" >> beam.ParDo(_SliceBatches(self._images_path, self._labels_path)))


def _explode(batch: ImageBatch) -> Iterator[MnistImage]:
    for i in range(len(batch)):
        yield MnistImage(index=batch.start + i, image=batch.images[i],
                         label=int(batch.labels[i]))


class ReadMnistImages(beam.PTransform):
    """Read an IDX file pair as one :class:`MnistImage` per element."""

    def __init__(self, images_path: Optional[str] = None,
                 labels_path: Optional[str] = None, limit: Optional[int] = None) -> None:
        super().__init__()
        self._batches = ReadMnistBatches(images_path, labels_path, 1000, limit)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (pbegin
                | "Batches" >> self._batches
                | "Explode" >> beam.FlatMap(_explode))
