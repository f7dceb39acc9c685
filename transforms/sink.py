"""WritePredictions: one CSV line per image, to files (atomically) or stdout.

Line format (with a header line in each file)::

    index,label,prediction,emitted_at,classified_at

To a folder, each bundle becomes one file ``predictions-<uuid>.csv``, written
as a hidden temporary file and renamed with ``os.replace`` when the bundle
finishes, so a reader never sees half a file and a retried bundle never
clobbers another's. :func:`count_rows` counts what such a folder holds.

The Beam counters ``written`` and ``written_correct`` (namespace
``beam_gpu_runner.mnist``) count the lines each bundle wrote, once it wrote
them (a file renamed into place, lines flushed to stdout).
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from typing import AbstractSet, Iterator

import apache_beam as beam
from apache_beam.metrics.metric import Metrics

from beam_gpu_runner.transforms.batch import BatchPredictions
from beam_gpu_runner.transforms.classifier import METRICS_NAMESPACE

_LOG = logging.getLogger(__name__)

HEADER = "index,label,prediction,emitted_at,classified_at"
STDOUT = "-"
FILE_PREFIX = "predictions-"
FILE_SUFFIX = ".csv"
WRITTEN = "written"
WRITTEN_CORRECT = "written_correct"


@dataclass(frozen=True)
class RowCount:
    rows: int = 0
    correct: int = 0


def prediction_files(directory: str) -> set[str]:
    """Names of the finished prediction files in ``directory`` (none if absent)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {n for n in names if n.startswith(FILE_PREFIX) and n.endswith(FILE_SUFFIX)}


def count_rows(directory: str, skip: AbstractSet[str] = frozenset()) -> RowCount:
    """Rows (and correct predictions) in the prediction files of ``directory``,
    leaving out the files named in ``skip`` (e.g. those of an earlier run)."""
    rows = correct = 0
    for name in sorted(prediction_files(directory) - set(skip)):
        with open(os.path.join(directory, name), encoding="ascii") as f:
            header = f.readline().rstrip("\n")
            if header != HEADER:
                raise ValueError("count_rows: %s does not start with the header %r; is "
                                 "it a prediction file?" % (os.path.join(directory, name),
                                                            HEADER))
            for line in f:
                _, label, prediction, _ = line.split(",", 3)
                rows += 1
                correct += label == prediction
    return RowCount(rows, correct)


class _Counted(beam.DoFn):
    def __init__(self) -> None:
        self._written = Metrics.counter(METRICS_NAMESPACE, WRITTEN)
        self._written_correct = Metrics.counter(METRICS_NAMESPACE, WRITTEN_CORRECT)

    def _count(self, rows: int, correct: int) -> None:
        self._written.inc(rows)
        self._written_correct.inc(correct)


def csv_lines(batch: BatchPredictions) -> Iterator[str]:
    # The two times are the batch's: format them once, not once per line
    # (the per-line float formatting was the sink's hottest frame).
    line = "%%d,%%d,%%d,%.6f,%.6f" % (batch.emitted_at, batch.classified_at)
    return map(line.__mod__, zip(batch.indices.tolist(), batch.labels.tolist(),
                                 batch.predictions.tolist()))


class _WriteBundleFiles(_Counted):
    def __init__(self, directory: str) -> None:
        super().__init__()
        self._directory = directory
        self._lines: list[str] = []
        self._correct = 0

    def setup(self) -> None:
        os.makedirs(self._directory, exist_ok=True)

    def start_bundle(self) -> None:
        self._lines = []
        self._correct = 0

    def process(self, batch: BatchPredictions) -> None:
        self._lines.extend(csv_lines(batch))
        self._correct += batch.correct

    def finish_bundle(self) -> None:
        if not self._lines:
            return
        name = "%s%s%s" % (FILE_PREFIX, uuid.uuid4().hex, FILE_SUFFIX)
        final = os.path.join(self._directory, name)
        tmp = os.path.join(self._directory, ".%s.tmp" % name)
        with open(tmp, "w", encoding="ascii") as f:
            f.write(HEADER + "\n")
            f.write("\n".join(self._lines) + "\n")
        os.replace(tmp, final)
        _LOG.debug("WritePredictions: %d lines to %s", len(self._lines), final)
        self._count(len(self._lines), self._correct)
        self._lines = []


class _PrintLines(_Counted):
    def process(self, batch: BatchPredictions) -> None:
        sys.stdout.write("".join(line + "\n" for line in csv_lines(batch)))
        sys.stdout.flush()
        self._count(len(batch), batch.correct)


class WritePredictions(beam.PTransform):
    """BatchPredictions -> CSV lines in ``output`` (a folder), or stdout for ``-``."""

    def __init__(self, output: str) -> None:
        super().__init__()
        if not output:
            raise ValueError("WritePredictions: output must be a folder or '-', got %r"
                             % output)
        self._output = output

    def expand(self, predictions: beam.PCollection) -> beam.PCollection:
        if self._output == STDOUT:
            return predictions | "Print" >> beam.ParDo(_PrintLines())
        return predictions | "WriteFiles" >> beam.ParDo(_WriteBundleFiles(self._output))
