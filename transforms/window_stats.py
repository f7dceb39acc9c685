"""Per-window accuracy, throughput and latency of classified batches."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

import apache_beam as beam

import beam_gpu_runner

from beam_gpu_runner.transforms.batch import BatchPredictions

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowStats:
    """Sums over one window; ``window_start``/``window_end`` in seconds (epoch)."""

    images: int = 0
    correct: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def images_per_second(self) -> float:
        """Images emitted in the window over the window's length."""
        span = self.window_end - self.window_start
        return self.images / span if span > 0 else 0.0

    @property
    def mean_latency(self) -> float:
        """Mean seconds from emission to classification."""
        return self.latency_sum / self.images if self.images else 0.0

    def plus(self, other: "WindowStats") -> "WindowStats":
        return replace(self, images=self.images + other.images,
                       correct=self.correct + other.correct,
                       latency_sum=self.latency_sum + other.latency_sum,
                       latency_max=max(self.latency_max, other.latency_max))

    def line(self) -> str:
        return ("window %.1f-%.1f: %d images, accuracy %.2f%%, %.0f images/s, "
                "latency mean %.1f ms max %.1f ms"
                % (self.window_start, self.window_end, self.images,
                   100.0 * self.accuracy, self.images_per_second,
                   1000.0 * self.mean_latency, 1000.0 * self.latency_max))


def batch_stats(batch: BatchPredictions) -> WindowStats:
    latency = max(0.0, batch.classified_at - batch.emitted_at) if batch.emitted_at else 0.0
    return WindowStats(images=len(batch), correct=batch.correct,
                       latency_sum=latency * len(batch), latency_max=latency)


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
    def process(self, stats: WindowStats,
                window: Any = beam.DoFn.WindowParam) -> Iterator[WindowStats]:
        yield replace(stats, window_start=float(window.start), window_end=float(window.end))


def _report(stats: WindowStats) -> WindowStats:
    line = stats.line()
    if beam_gpu_runner.runtime_context().worker_id is not None:
        # In a GpuRunner worker process: the runner relays logging, not stdio.
        _LOG.info("%s", line)
    else:
        print(line, file=sys.stderr, flush=True)
    return stats


class WindowedStats(beam.PTransform):
    """Windowed BatchPredictions -> one WindowStats per window, printed as it fires.

    The progress line goes to stderr (stdout may carry the predictions); inside
    a GpuRunner worker it is logged at INFO instead, which the runner relays.
    """

    def __init__(self, report: bool = True) -> None:
        super().__init__()
        self._report = report

    def expand(self, predictions: beam.PCollection) -> beam.PCollection:
        stats = (predictions
                 | "Combine" >> beam.CombineGlobally(WindowStatsFn()).without_defaults()
                 | "Bounds" >> beam.ParDo(_StampWindow()))
        if self._report:
            stats = stats | "Report" >> beam.Map(_report)
        return stats
