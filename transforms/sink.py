"""WritePredictions: one CSV line per image, to files (atomically) or stdout.

Line format (with a header line in each file)::

    index,label,prediction,emitted_at,classified_at

To a folder, each bundle becomes one file ``predictions-<uuid>.csv``, written
as a hidden temporary file and renamed with ``os.replace`` when the bundle
finishes, so a reader never sees half a file and a retried bundle never
clobbers another's.
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Iterator

import apache_beam as beam

from beam_gpu_runner.transforms.batch import BatchPredictions

_LOG = logging.getLogger(__name__)

HEADER = "index,label,prediction,emitted_at,classified_at"
STDOUT = "-"


def csv_lines(batch: BatchPredictions) -> Iterator[str]:
    # The two times are the batch's: format them once, not once per line
    # (the per-line float formatting was the sink's hottest frame).
    line = "%%d,%%d,%%d,%.6f,%.6f" % (batch.emitted_at, batch.classified_at)
    return map(line.__mod__, zip(batch.indices.tolist(), batch.labels.tolist(),
                                 batch.predictions.tolist()))


class _WriteBundleFiles(beam.DoFn):
    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._lines: list[str] = []

    def setup(self) -> None:
        os.makedirs(self._directory, exist_ok=True)

    def start_bundle(self) -> None:
        self._lines = []

    def process(self, batch: BatchPredictions) -> None:
        self._lines.extend(csv_lines(batch))

    def finish_bundle(self) -> None:
        if not self._lines:
            return
        name = "predictions-%s.csv" % uuid.uuid4().hex
        final = os.path.join(self._directory, name)
        tmp = os.path.join(self._directory, ".%s.tmp" % name)
        with open(tmp, "w", encoding="ascii") as f:
            f.write(HEADER + "\n")
            f.write("\n".join(self._lines) + "\n")
        os.replace(tmp, final)
        _LOG.debug("WritePredictions: %d lines to %s", len(self._lines), final)
        self._lines = []


class _PrintLines(beam.DoFn):
    def process(self, batch: BatchPredictions) -> None:
        sys.stdout.write("".join(line + "\n" for line in csv_lines(batch)))
        sys.stdout.flush()


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
