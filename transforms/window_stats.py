"""Per-window accuracy, throughput and latency of classified batches.

A window's line, printed to stderr as the window fires (in a GpuRunner
worker too: the runner forwards its workers' stderr)::

    window 17:42:10-17:42:12: 2000 images, accuracy 92.80%, 1000 images/s, latency mean 120.2 ms max 287.5 ms

Times are local clock times (with hundredths when the window does not start
on a whole second). The rate is over the stretch of the window that the
stream really covered: a window where the stream started or ended holds
fewer batches, and divides by their span, not by the window's length.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

import apache_beam as beam

from beam_gpu_runner.transforms.batch import BatchPredictions

_LOG = logging.getLogger(__name__)


def clock_time(seconds: float, fraction: bool = False) -> str:
    """``17:42:10`` (local time) for epoch ``seconds``; ``17:42:10.05`` with
    ``fraction``."""
    text = time.strftime("%H:%M:%S", time.localtime(seconds))
    if fraction:
        text += ("%.2f" % (seconds % 1.0))[1:]
    return text


def clock_span(start: float, end: float) -> str:
    """``17:42:10-17:42:12``; hundredths when either bound needs them."""
    fraction = any(abs(t - round(t)) > 1e-6 for t in (start, end))
    return "%s-%s" % (clock_time(start, fraction), clock_time(end, fraction))


@dataclass(frozen=True)
class WindowStats:
    """Sums over one window; ``window_start``/``window_end`` in seconds (epoch).

    ``batches``, ``first_emitted`` and ``last_emitted`` (emission times of
    the window's first and last batch) give the span the stream covered;
    ``batch_seconds``, when the source's pace is known (batch size / rate),
    stands for the gap in a window of one batch.
    """

    images: int = 0
    correct: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0
    batches: int = 0
    first_emitted: float = math.inf
    last_emitted: float = -math.inf
    batch_seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def span(self) -> float:
        """Seconds of the window the stream covered.

        Each batch stands for the interval until the next one (the mean gap
        between the window's batches), so ``batches x gap``, at most the
        window's length: the whole window while the stream runs through it,
        less where it started or ended. With one batch the gap is
        ``batch_seconds``; when that is unknown too (or there are no emission
        times) the window's length is used.
        """
        length = self.window_end - self.window_start
        if self.batches >= 2 and self.last_emitted > self.first_emitted:
            gap = (self.last_emitted - self.first_emitted) / (self.batches - 1)
        elif self.batches == 1 and self.batch_seconds > 0:
            gap = self.batch_seconds
        else:
            return length
        covered = self.batches * gap
        return min(length, covered) if length > 0 else covered

    @property
    def images_per_second(self) -> float:
        """Images emitted in the window over the span the stream covered."""
        span = self.span
        return self.images / span if span > 0 else 0.0

    @property
    def mean_latency(self) -> float:
        """Mean seconds from emission to classification."""
        return self.latency_sum / self.images if self.images else 0.0

    def plus(self, other: "WindowStats") -> "WindowStats":
        return replace(self, images=self.images + other.images,
                       correct=self.correct + other.correct,
                       latency_sum=self.latency_sum + other.latency_sum,
                       latency_max=max(self.latency_max, other.latency_max),
                       batches=self.batches + other.batches,
                       first_emitted=min(self.first_emitted, other.first_emitted),
                       last_emitted=max(self.last_emitted, other.last_emitted))

    def line(self) -> str:
        return ("window %s: %d images, accuracy %.2f%%, %.0f images/s, "
                "latency mean %.1f ms max %.1f ms"
                % (clock_span(self.window_start, self.window_end), self.images,
                   100.0 * self.accuracy, self.images_per_second,
                   1000.0 * self.mean_latency, 1000.0 * self.latency_max))


def batch_stats(batch: BatchPredictions) -> WindowStats:
    if not batch.emitted_at:   # a file read: no emission time
        return WindowStats(images=len(batch), correct=batch.correct)
    latency = max(0.0, batch.classified_at - batch.emitted_at)
    return WindowStats(images=len(batch), correct=batch.correct,
                       latency_sum=latency * len(batch), latency_max=latency,
                       batches=1, first_emitted=batch.emitted_at,
                       last_emitted=batch.emitted_at)


class WindowStatsFn(beam.CombineFn):
    """Combines BatchPredictions into one WindowStats (without window bounds)."""

    def create_accumulator(self) -> WindowStats:
        return WindowStats()

    def add_input(self, acc: WindowStats, batch: BatchPredictions) -> WindowStats:
        return acc.plus(batch_stats(batch))

    def merge_accumulators(self, accs: Iterable[WindowStats]) -> WindowStats:
        total = WindowStats()
        for acc in accs:
            total = total.plus(acc)
        return total

    def extract_output(self, acc: WindowStats) -> WindowStats:
        return acc


class _StampWindow(beam.DoFn):
    def __init__(self, batch_seconds: float = 0.0) -> None:
        self._batch_seconds = batch_seconds

    def process(self, stats: WindowStats,
                window: Any = beam.DoFn.WindowParam) -> Iterator[WindowStats]:
        yield replace(stats, window_start=float(window.start), window_end=float(window.end),
                      batch_seconds=self._batch_seconds)


def _report(stats: WindowStats) -> WindowStats:
    print(stats.line(), file=sys.stderr, flush=True)
    return stats


class WindowedStats(beam.PTransform):
    """Windowed BatchPredictions -> one WindowStats per window, printed as it fires.

    The progress line goes to stderr (stdout may carry the predictions), from
    whichever process runs the step; GpuRunner forwards its workers' stderr.
    ``batch_seconds`` is the source's seconds per batch when it is paced
    (batch size / rate; 0 when unknown), see ``WindowStats.span``.
    """

    def __init__(self, report: bool = True, batch_seconds: float = 0.0) -> None:
        super().__init__()
        self._report = report
        self._batch_seconds = batch_seconds

    def expand(self, predictions: beam.PCollection) -> beam.PCollection:
        stats = (predictions
                 | "Combine" >> beam.CombineGlobally(WindowStatsFn()).without_defaults()
                 | "Bounds" >> beam.ParDo(_StampWindow(self._batch_seconds)))
        if self._report:
            stats = stats | "Report" >> beam.Map(_report)
        return stats
