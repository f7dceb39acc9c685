"""ReplayMnist: an unbounded source replaying the MNIST test set as batches.

A splittable DoFn (Beam's SDF API). Its restriction is an
:class:`~apache_beam.io.restriction_trackers.OffsetRange` over *batch numbers*:
batch ``k`` holds the images with sequence numbers ``k*B .. k*B+B-1`` (the last
one of a finite replay fewer), image ``s`` being test image ``s % N``, so the
replay loops over the set. Claiming whole batches keeps every split exact.

Rate limiting: batch ``k`` is due at ``t0 + k*B/rate`` (``t0``: the wall time
the replay started); when the next one is not due yet the DoFn checkpoints with
``defer_remainder(delay)``. It also checkpoints after ``max_call_seconds`` of
work, so that a runner sees output bundles of an endless replay. The default,
0.1 s, lets downstream stages start on a bundle while the replay emits the
next (with 1.0 s GpuRunner's steady MNIST throughput was ~35% lower; see
benchmarks/README.md).

Each batch's event timestamp is its emission wall time (also carried in
``ImageBatch.emitted_at`` for latency). The watermark is wall time while a
restriction emits, and, when it checkpoints, the later of wall time and its
next batch's due time (``ManualWatermarkEstimator``): no batch of it can come
earlier. So windows close as the clock passes them even while a part of the
replay that a runner split off waits for its turn (with Beam's wall-time
estimator such a part held every window behind it until it ran).

With a finite ``num_images`` the DoFn is bounded per element, so it runs on the
batch DirectRunner too; ``num_images=0`` replays forever and marks the DoFn
unbounded (run it with ``--streaming``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms.batch import ImageBatch
from beam_gpu_runner.transforms.idx import MnistData, read_mnist_cached

_LOG = logging.getLogger(__name__)

ENDLESS_BATCHES = 2 ** 62  # "forever": an OffsetRange needs an end


@dataclass(frozen=True)
class ReplayConfig:
    """How to replay: ``rate`` images/s (0: unlimited), ``num_images`` (0: endless)."""

    images_path: str
    labels_path: str
    batch_size: int = 100
    rate: float = 0.0
    num_images: int = 10000
    max_call_seconds: float = 1.0
    #: a finite replay's batch range is split into this many restrictions,
    #: which a runner may read in parallel (an endless one stays whole)
    shards: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("ReplayConfig: batch_size must be >= 1, got %r" % self.batch_size)
        if self.rate < 0:
            raise ValueError("ReplayConfig: rate must be >= 0 (0 = unlimited), got %r"
                             % self.rate)
        if self.shards < 1:
            raise ValueError("ReplayConfig: shards must be >= 1, got %r" % self.shards)
        if self.num_images < 0:
            raise ValueError("ReplayConfig: num_images must be >= 0 (0 = endless), got %r"
                             % self.num_images)

    @property
    def endless(self) -> bool:
        return self.num_images == 0

    @property
    def num_batches(self) -> int:
        if self.endless:
            return ENDLESS_BATCHES
        return math.ceil(self.num_images / self.batch_size)

    def batch_span(self, k: int) -> tuple[int, int]:
        """Sequence numbers [start, stop) of batch ``k``."""
        start = k * self.batch_size
        stop = start + self.batch_size
        if not self.endless:
            stop = min(stop, self.num_images)
        return start, stop

    def due(self, t0: float, k: int) -> float:
        """Wall time at which batch ``k`` is due (``t0`` for an unlimited rate)."""
        if self.rate <= 0:
            return t0
        return t0 + k * self.batch_size / self.rate


class _ReplayFn(beam.DoFn, RestrictionProvider):
    """t0 (replay start wall time) -> timestamped ImageBatch elements.

    Its own restriction provider: an OffsetRange of batch numbers.
    """

    def __init__(self, config: ReplayConfig) -> None:
        self._config = config
        self._data: Optional[MnistData] = None

    def initial_restriction(self, element: float) -> OffsetRange:
        return OffsetRange(0, self._config.num_batches)

    def split(self, element: float, restriction: OffsetRange) -> Iterator[OffsetRange]:
        """Contiguous shards of a finite replay's batches, for parallel reading.

        Batch ``k`` is still due at ``t0 + k*B/rate``: with a rate the shards
        take turns; unlimited, they all read at once.
        """
        if self._config.endless or self._config.shards == 1:
            yield restriction
            return
        size = max(1, math.ceil(restriction.size() / self._config.shards))
        yield from restriction.split(size)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: float, restriction: OffsetRange) -> int:
        return int(restriction.size())

    def truncate(self, element: float, restriction: OffsetRange) -> Optional[OffsetRange]:
        # On drain an endless replay stops; a finite one finishes.
        return None if self._config.endless else restriction

    def setup(self) -> None:
        self._data = read_mnist_cached(self._config.images_path, self._config.labels_path)

    def _batch(self, k: int, now: float) -> ImageBatch:
        assert self._data is not None, "setup() not called"
        start, stop = self._config.batch_span(k)
        n = len(self._data)
        first = start % n
        if first + (stop - start) <= n:   # no wrap: a view, copied once by the coder
            rows: Any = slice(first, first + (stop - start))
        else:
            rows = np.arange(start, stop, dtype=np.int64) % n
        return ImageBatch(start=start, images=self._data.images[rows],
                          labels=self._data.labels[rows].astype(np.int32),
                          emitted_at=now)

    def process(
        self,
        t0: float,
        tracker: Any = beam.DoFn.RestrictionParam(),
        watermark_estimator: Any = beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[TimestampedValue]:
        config = self._config
        k = int(tracker.current_restriction().start)
        first = k
        call_started = time.time()
        while True:
            now = time.time()
            due = config.due(t0, k)
            _advance(watermark_estimator, max(now, due))
            wait = due - now
            if wait > 0:
                tracker.defer_remainder(Duration.of(wait))
                return
            if k > first and now - call_started > config.max_call_seconds:
                tracker.defer_remainder()  # at least one batch per call: progress
                return
            if not tracker.try_claim(k):
                return
            yield TimestampedValue(self._batch(k, now), Timestamp.of(now))
            k += 1


def _advance(estimator: ManualWatermarkEstimator, seconds: float) -> None:
    """Watermarks only move forward (the clock may not)."""
    current = estimator.current_watermark()
    stamp = Timestamp.of(seconds)
    if current is None or stamp > current:
        estimator.set_watermark(stamp)


class _EndlessReplayFn(_ReplayFn):
    @beam.DoFn.unbounded_per_element()
    def process(  # type: ignore[override]
        self,
        t0: float,
        tracker: Any = beam.DoFn.RestrictionParam(),
        watermark_estimator: Any = beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[TimestampedValue]:
        return super().process(t0, tracker, watermark_estimator)


def _start_time(_: bytes) -> float:
    return time.time()


class ReplayMnist(beam.PTransform):
    """PBegin -> ImageBatch elements replayed at a chosen rate.

    Defaults: the bundled test set, 100 images per batch, unlimited rate, the
    whole set once.
    """

    def __init__(self, images_path: Optional[str] = None, labels_path: Optional[str] = None,
                 batch_size: int = 100, rate: float = 0.0, num_images: int = 10000,
                 max_call_seconds: float = 0.1, shards: int = 1) -> None:
        super().__init__()
        self.config = ReplayConfig(
            images_path=images_path or bundled.test_images_path(),
            labels_path=labels_path or bundled.test_labels_path(),
            batch_size=batch_size, rate=rate, num_images=num_images,
            max_call_seconds=max_call_seconds, shards=shards)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        fn_class = _EndlessReplayFn if self.config.endless else _ReplayFn
        return (pbegin
                | "Impulse" >> beam.Impulse()
                | "StartTime" >> beam.Map(_start_time)
                | "Replay" >> beam.ParDo(fn_class(self.config)))
