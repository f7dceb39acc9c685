"""ClassifyMnist: a DoFn that classifies ImageBatch elements on its worker's GPU."""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from beam_gpu_runner.transforms.batch import BatchPredictions, ImageBatch
from beam_gpu_runner.transforms.classifier import (
    METRICS_NAMESPACE, BatchClassifier, runtime_device)

_LOG = logging.getLogger(__name__)


class ClassifyMnist(beam.DoFn):
    """ImageBatch -> BatchPredictions, with one model on one device.

    In ``setup()`` it reads its device from ``beam_gpu_runner.runtime_context()``
    (the first GPU the runner gave this worker; CPU without one), puts the
    parameters there and compiles once for ``[batch_size, 784]``; input batches
    of any size are cut into that shape, the last one padded.

    One classifier per worker process and device: the DoFn instances of
    concurrent bundles share it through Beam's ``shared.Shared`` (as
    RunInference shares models), so a worker compiles once and holds the
    parameters on its device once.

    Which device it used is recorded twice: in each output's ``device`` field,
    and as the Beam counter ``images_on_<platform>:<id>`` (namespace
    ``beam_gpu_runner.mnist``), next to the ``images`` and ``correct`` counters.
    """

    def __init__(self, model_path: str, batch_size: int = 100) -> None:
        if batch_size < 1:
            raise ValueError("ClassifyMnist: batch_size must be >= 1, got %d" % batch_size)
        self._model_path = model_path
        self._batch_size = batch_size
        self._classifier: Optional[BatchClassifier] = None
        self._shared = shared.Shared()
        self._worker_id: Optional[str] = None
        self._images = Metrics.counter(METRICS_NAMESPACE, "images")
        self._correct = Metrics.counter(METRICS_NAMESPACE, "correct")

    def setup(self) -> None:
        device: Any
        device, self._worker_id = runtime_device()
        self._classifier = self._shared.acquire(
            lambda: BatchClassifier.from_file(self._model_path, device, self._batch_size),
            tag=(self._model_path, str(device), self._batch_size))
        _LOG.info("ClassifyMnist: worker %s classifies on %s",
                  self._worker_id, self._classifier.device_label)

    def process(self, batch: ImageBatch) -> Iterator[BatchPredictions]:
        assert self._classifier is not None, "setup() not called"
        predictions = self._classifier(batch.images)
        out = BatchPredictions(
            start=batch.start, predictions=predictions, labels=batch.labels,
            emitted_at=batch.emitted_at, classified_at=time.time(),
            device=self._classifier.device_label, worker_id=self._worker_id)
        self._images.inc(len(out))
        self._correct.inc(out.correct)
        yield out
