"""A JAX ModelHandler, so that Beam's RunInference classifies MNIST images.

Same behaviour as ClassifyMnist: the device comes from the runtime context
(CPU without a GPU), parameters are put there once, one jitted function, a
fixed batch shape (RunInference's batches are padded up to ``batch_size``).
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_gpu_runner.transforms.classifier import BatchClassifier, runtime_device

_LOG = logging.getLogger(__name__)


class JaxMnistModelHandler(ModelHandler[np.ndarray, PredictionResult, BatchClassifier]):
    """Examples are uint8 [784] pixel vectors; inferences are int digits."""

    def __init__(self, model_path: str, batch_size: int = 100) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(
                "JaxMnistModelHandler: batch_size must be >= 1, got %d" % batch_size)
        self._model_path = model_path
        self._batch_size = batch_size

    def load_model(self) -> BatchClassifier:
        device, worker_id = runtime_device()
        classifier = BatchClassifier.from_file(self._model_path, device, self._batch_size)
        _LOG.info("JaxMnistModelHandler: worker %s loaded %s on %s",
                  worker_id, self._model_path, classifier.device_label)
        return classifier

    def run_inference(self, batch: Sequence[np.ndarray], model: BatchClassifier,
                      inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        if not batch:
            return []
        images = np.stack([np.asarray(x, dtype=np.uint8).reshape(-1) for x in batch])
        predictions = model(images)
        return [PredictionResult(example, int(p), model_id=self._model_path)
                for example, p in zip(batch, predictions)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "JaxMnistModelHandler"
