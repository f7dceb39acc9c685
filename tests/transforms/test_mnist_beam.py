"""ReadMnist*, ClassifyMnist, RunInference, the sink and window stats on Beam."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import apache_beam as beam
import jax
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

import beam_gpu_runner
from beam_gpu_runner.resources.runtime_context import RESOURCES_ENV, RuntimeContext
from beam_gpu_runner.transforms.batch import BatchPredictions, ImageBatch
from beam_gpu_runner.transforms.classifier import METRICS_NAMESPACE
from beam_gpu_runner.transforms.classify_mnist import ClassifyMnist
from beam_gpu_runner.transforms.idx import MnistData
from beam_gpu_runner.transforms.model_handler import JaxMnistModelHandler
from beam_gpu_runner.transforms.read import ReadMnistBatches, ReadMnistImages
from beam_gpu_runner.transforms.sink import HEADER, WritePredictions
from beam_gpu_runner.transforms.window_stats import WindowStats, WindowStatsFn


def _pipeline(runner: str) -> beam.Pipeline:
    return beam.Pipeline(options=PipelineOptions(["--runner=%s" % runner]))


def _counters(result: Any) -> dict[str, int]:
    found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    return {c.key.metric.name: int(c.committed) for c in found["counters"]}


def test_read_batches(beam_runner: str, test_set: MnistData) -> None:
    def check(batches: list[ImageBatch]) -> None:
        batches = sorted(batches, key=lambda b: b.start)
        assert [(b.start, len(b)) for b in batches] == [(0, 100), (100, 100), (200, 50)]
        for b in batches:
            np.testing.assert_array_equal(b.images, test_set.images[b.start:b.start + len(b)])
            np.testing.assert_array_equal(b.labels, test_set.labels[b.start:b.start + len(b)])
            assert b.images.dtype == np.uint8 and b.images.shape[1] == 784

    with _pipeline(beam_runner) as p:
        assert_that(p | ReadMnistBatches(batch_size=100, limit=250)
                    | beam.combiners.ToList(), lambda out: check(out[0]))


def test_read_images(beam_runner: str) -> None:
    with _pipeline(beam_runner) as p:
        labels = p | ReadMnistImages(limit=10) | beam.Map(lambda im: (im.index, im.label))
        assert_that(labels, equal_to(list(enumerate([7, 2, 1, 0, 4, 1, 4, 9, 5, 9]))))


def _classify(runner: str, model: str, limit: int, read_batch: int, classify_batch: int,
              check: Callable[[list[BatchPredictions]], None]) -> dict[str, int]:
    """Run ReadMnistBatches -> ClassifyMnist; ``check`` sees the sorted outputs."""
    p = _pipeline(runner)
    out = (p | ReadMnistBatches(batch_size=read_batch, limit=limit)
           | beam.ParDo(ClassifyMnist(model, batch_size=classify_batch))
           | beam.combiners.ToList())
    assert_that(out, lambda lists: check(sorted(lists[0], key=lambda b: b.start)))
    result = p.run()
    result.wait_until_finish()
    return _counters(result)


def test_classify_on_cpu(beam_runner: str, reference_model: str, test_set: MnistData,
                         reference_predictions: np.ndarray) -> None:
    # Input batches of 300 are cut into the classifier's fixed 128, the last padded.
    expected = reference_predictions[:1000]

    def check(batches: list[BatchPredictions]) -> None:
        assert [len(b) for b in batches] == [300, 300, 300, 100]
        predictions = np.concatenate([b.predictions for b in batches])
        np.testing.assert_array_equal(predictions, expected)
        assert {b.device for b in batches} == {"cpu:0"}
        assert {b.worker_id for b in batches} == {None}

    counters = _classify(beam_runner, reference_model, 1000, 300, 128, check)
    assert counters["images"] == 1000
    assert counters["images_on_cpu:0"] == 1000
    assert counters["correct"] == int(np.sum(expected == test_set.labels[:1000]))



def test_classify_reads_the_runtime_context(beam_runner: str, reference_model: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # What GpuRunner hands a worker with physical GPU 2. This jaxlib has no GPU
    # backend, so the context falls back to the CPU, but the worker id shows
    # the DoFn read the context.
    monkeypatch.setenv(RESOURCES_ENV, json.dumps({
        "worker_id": "worker-7",
        "resources": {"gpu": [{"index": "2", "uuid": "GPU-fake", "name": "NVIDIA Fake"}]}}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    def check(batches: list[BatchPredictions]) -> None:
        assert {b.worker_id for b in batches} == {"worker-7"}
        assert {b.device for b in batches} == {"cpu:0"}

    counters = _classify(beam_runner, reference_model, 200, 100, 100, check)
    assert counters["images_on_cpu:0"] == 200


def test_classify_uses_the_context_device(beam_runner: str, reference_model: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    class FakeContext(RuntimeContext):
        def jax_device(self, which: int = 0) -> Any:
            asked.append(which)
            return jax.devices("cpu")[0]

    monkeypatch.setattr(beam_gpu_runner, "runtime_context",
                        lambda: FakeContext(worker_id="fake-worker"))
    def check(batches: list[BatchPredictions]) -> None:
        assert {b.worker_id for b in batches} == {"fake-worker"}

    _classify(beam_runner, reference_model, 100, 100, 100, check)
    assert asked == [0]


def test_classify_fails_on_a_malformed_context(beam_runner: str, reference_model: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RESOURCES_ENV, "{not json")
    with pytest.raises(Exception, match=RESOURCES_ENV):
        _classify(beam_runner, reference_model, 100, 100, 100, lambda _: None)


def test_classify_rejects_bad_batch_size(reference_model: str) -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        ClassifyMnist(reference_model, batch_size=0)


def test_run_inference(beam_runner: str, reference_model: str,
                       reference_predictions: np.ndarray) -> None:
    handler: KeyedModelHandler[Any, Any, Any, Any] = KeyedModelHandler(
        JaxMnistModelHandler(reference_model, batch_size=64))
    p = _pipeline(beam_runner)
    out = (p | ReadMnistImages(limit=300)
           | beam.Map(lambda im: (im.index, im.image))
           | RunInference(handler)
           | beam.Map(lambda kv: (kv[0], kv[1].inference)))
    assert_that(out, equal_to([(i, int(reference_predictions[i])) for i in range(300)]))
    result = p.run()
    result.wait_until_finish()
    assert _counters(result)["images_on_cpu:0"] == 300


def test_model_handler_directly(reference_model: str, test_set: MnistData,
                                reference_predictions: np.ndarray) -> None:
    handler = JaxMnistModelHandler(reference_model, batch_size=8)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 8}
    model = handler.load_model()
    assert model.device_label == "cpu:0"
    results = list(handler.run_inference(list(test_set.images[:3]), model))
    assert [r.inference for r in results] == reference_predictions[:3].tolist()
    assert results[0].model_id == reference_model


def _predictions(start: int, n: int) -> BatchPredictions:
    labels = np.arange(start, start + n, dtype=np.int32) % 10
    predictions = labels.copy()
    predictions[0] = (labels[0] + 1) % 10
    return BatchPredictions(start=start, predictions=predictions, labels=labels,
                            emitted_at=100.0, classified_at=100.5, device="cpu:0")


def test_sink_writes_whole_files(beam_runner: str, tmp_path: Path) -> None:
    out = tmp_path / "preds"
    with _pipeline(beam_runner) as p:
        _ = (p | beam.Create([_predictions(s, 10) for s in range(0, 50, 10)])
             | WritePredictions(str(out)))
    names = os.listdir(out)
    assert names and all(n.startswith("predictions-") and n.endswith(".csv") for n in names)
    lines: list[str] = []
    for name in names:
        text = (out / name).read_text().splitlines()
        assert text[0] == HEADER
        lines.extend(text[1:])
    indices = sorted(int(line.split(",")[0]) for line in lines)
    assert indices == list(range(50))
    assert "0,0,1,100.000000,100.500000" in lines


def test_sink_to_stdout(beam_runner: str, capsys: pytest.CaptureFixture[str]) -> None:
    with _pipeline(beam_runner) as p:
        _ = p | beam.Create([_predictions(0, 3)]) | WritePredictions("-")
    assert capsys.readouterr().out.splitlines() == [
        "0,0,1,100.000000,100.500000", "1,1,1,100.000000,100.500000",
        "2,2,2,100.000000,100.500000"]


def test_sink_counts_what_it_wrote(beam_runner: str, tmp_path: Path) -> None:
    from beam_gpu_runner.transforms.sink import count_rows, prediction_files
    out = tmp_path / "preds"
    earlier = out / "predictions-earlier.csv"
    out.mkdir()
    earlier.write_text(HEADER + "\n7,7,7,1.0,2.0\n")
    p = _pipeline(beam_runner)
    _ = (p | beam.Create([_predictions(s, 10) for s in range(0, 30, 10)])
         | WritePredictions(str(out)))
    result = p.run()
    result.wait_until_finish()
    assert {k: v for k, v in _counters(result).items() if k.startswith("written")} == {
        "written": 30, "written_correct": 27}
    new = count_rows(str(out), skip={earlier.name})
    assert (new.rows, new.correct) == (30, 27)
    assert count_rows(str(out)).rows == 31 and earlier.name in prediction_files(str(out))
    assert count_rows(str(tmp_path / "absent")).rows == 0
    (out / "predictions-bogus.csv").write_text("not,a,prediction,file\n")
    with pytest.raises(ValueError, match="does not start with the header"):
        count_rows(str(out))


def test_sink_rejects_empty_output() -> None:
    with pytest.raises(ValueError, match="output must be a folder or '-'"):
        WritePredictions("")


def test_window_stats_combine() -> None:
    fn = WindowStatsFn()
    a = fn.add_input(fn.create_accumulator(), _predictions(0, 10))
    b = fn.add_input(fn.create_accumulator(), _predictions(10, 10))
    stats = fn.extract_output(fn.merge_accumulators([a, b]))
    assert (stats.images, stats.correct) == (20, 18)
    assert stats.accuracy == pytest.approx(0.9)
    assert stats.mean_latency == pytest.approx(0.5)
    framed = WindowStats(images=20, correct=18, window_start=10.0, window_end=12.0)
    assert framed.images_per_second == pytest.approx(10.0)
    assert "20 images, accuracy 90.00%, 10 images/s" in framed.line()


def _window(emitted: list[float], start: float = 1000.0, length: float = 2.0,
            batch: int = 100, batch_seconds: float = 0.0) -> WindowStats:
    fn = WindowStatsFn()
    acc = fn.create_accumulator()
    for t in emitted:
        b = _predictions(0, batch)
        acc = fn.add_input(acc, BatchPredictions(
            start=0, predictions=b.predictions, labels=b.labels, emitted_at=t,
            classified_at=t + 0.01, device="cpu:0"))
    from dataclasses import replace
    return replace(fn.extract_output(acc), window_start=start, window_end=start + length,
                   batch_seconds=batch_seconds)


def test_window_rate_is_over_the_span_the_stream_covered() -> None:
    # 1000 images/s in batches of 100: one batch every 0.1 s
    full = _window([1000.03 + 0.1 * i for i in range(20)])
    assert full.images_per_second == pytest.approx(1000.0)
    last = _window([1000.03, 1000.13, 1000.23])           # the stream ended here
    assert last.span == pytest.approx(0.3)
    assert last.images_per_second == pytest.approx(1000.0)  # not 300 / 2 s
    first = _window([1001.5 + 0.1 * i for i in range(5)])  # it started here
    assert first.images_per_second == pytest.approx(1000.0)
    one = _window([1001.95])
    assert one.images_per_second == pytest.approx(50.0)    # gap unknown: the window
    assert _window([1001.95], batch_seconds=0.1).images_per_second == pytest.approx(1000.0)
    assert _window([]).images_per_second == 0.0


def test_window_line_shows_clock_times() -> None:
    import time as _time
    from beam_gpu_runner.transforms.window_stats import clock_span
    start = _time.mktime((2026, 11, 29, 17, 42, 10, 0, 0, -1))   # local time
    line = _window([start + 0.1 * i for i in range(20)], start=start).line()
    assert line.startswith("window 17:42:10-17:42:12: 2000 images, accuracy 99.00%, "
                           "1000 images/s, latency mean 10.0 ms max 10.0 ms")
    assert clock_span(start + 0.05, start + 0.1) == "17:42:10.05-17:42:10.10"


def test_concurrent_classify_instances_share_one_classifier(reference_model):
    """Two DoFn copies (two concurrent bundles on one worker) compile once."""
    import pickle
    fn = ClassifyMnist(reference_model, batch_size=10)
    first, second = pickle.loads(pickle.dumps(fn)), pickle.loads(pickle.dumps(fn))
    first.setup()
    second.setup()
    assert first._classifier is second._classifier
