"""The values that flow through the MNIST pipelines (picklable dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class ImageBatch:
    """Consecutive images: uint8 [B, 784] pixels, int32 [B] labels.

    ``start`` is the position of the first image in its stream (for a file read,
    its index in the file; for a replay, the sequence number, which keeps
    growing as the replay loops over the set). ``emitted_at`` is the wall-clock
    time (seconds since the epoch) at which a source emitted the batch, 0.0 for
    plain file reads.
    """

    start: int
    images: np.ndarray
    labels: np.ndarray
    emitted_at: float = 0.0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def indices(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self), dtype=np.int64)


@dataclass(frozen=True)
class MnistImage:
    """One image: uint8 [784] pixels and its label."""

    index: int
    image: np.ndarray
    label: int


@dataclass(frozen=True)
class BatchPredictions:
    """A classified :class:`ImageBatch`: int32 [B] predictions next to labels.

    ``device`` is the JAX device that classified it (``platform:id``, e.g.
    ``cpu:0``, ``gpu:1``), ``worker_id`` the runtime context's worker (None
    outside GpuRunner), ``classified_at`` the wall-clock time after
    classification.
    """

    start: int
    predictions: np.ndarray
    labels: np.ndarray
    emitted_at: float
    classified_at: float
    device: str
    worker_id: Optional[str] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def indices(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self), dtype=np.int64)

    @property
    def correct(self) -> int:
        return int(np.sum(self.predictions == self.labels))
