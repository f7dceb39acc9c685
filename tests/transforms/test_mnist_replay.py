"""ReplayMnist: the splittable DoFn's restriction, rate limit, timestamps, looping."""
from __future__ import annotations

import time
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms.batch import ImageBatch
from beam_gpu_runner.transforms.idx import MnistData
from beam_gpu_runner.transforms.replay import (
    ENDLESS_BATCHES, ReplayConfig, ReplayMnist, _EndlessReplayFn, _ReplayFn)


def _config(**kw: Any) -> ReplayConfig:
    return ReplayConfig(bundled.test_images_path(), bundled.test_labels_path(), **kw)


def test_config() -> None:
    c = _config(batch_size=100, num_images=250, rate=1000.0)
    assert c.num_batches == 3
    assert [c.batch_span(k) for k in range(3)] == [(0, 100), (100, 200), (200, 250)]
    assert c.due(50.0, 2) == pytest.approx(50.2)
    assert _config(rate=0.0).due(50.0, 7) == 50.0
    endless = _config(num_images=0, batch_size=10)
    assert endless.endless and endless.num_batches == ENDLESS_BATCHES
    assert endless.batch_span(1001) == (10010, 10020)
    for bad in ({"batch_size": 0}, {"rate": -1.0}, {"num_images": -5}):
        with pytest.raises(ValueError, match="ReplayConfig"):
            _config(**bad)


def _run_process(fn: _ReplayFn, t0: float, restriction: OffsetRange,
                 estimator: Optional[ManualWatermarkEstimator] = None,
                 ) -> tuple[list[TimestampedValue], ThreadsafeRestrictionTracker]:
    fn.setup()
    tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(restriction))
    out = list(fn.process(t0, RestrictionTrackerView(tracker),
                          estimator or ManualWatermarkEstimator(None)))
    return out, tracker


def test_a_part_not_due_yet_holds_the_watermark_at_its_due_time_not_now() -> None:
    # A part of a rate-limited replay that a runner split off (batches 50-99
    # at 1 batch/s: due in 50 s) waits; its watermark is its due time, so
    # windows before it close while it waits.
    fn = _ReplayFn(_config(batch_size=10, num_images=1000, rate=10.0))
    t0 = time.time()
    estimator = ManualWatermarkEstimator(None)
    out, tracker = _run_process(fn, t0, OffsetRange(50, 100), estimator)
    assert out == []
    residual, delay = tracker.deferred_status()
    assert residual == OffsetRange(50, 100) and delay.micros > 45_000_000
    assert estimator.current_watermark() == Timestamp.of(t0 + 50.0)


def test_the_watermark_is_wall_time_while_emitting_and_never_goes_back() -> None:
    fn = _ReplayFn(_config(batch_size=10, num_images=1000))
    ahead = Timestamp.of(time.time() + 3600)
    estimator = ManualWatermarkEstimator(ahead)
    before = time.time()
    out, _ = _run_process(fn, before, OffsetRange(0, 3), estimator)
    assert len(out) == 3 and estimator.current_watermark() == ahead   # not moved back
    estimator = ManualWatermarkEstimator(None)
    _run_process(fn, before, OffsetRange(0, 3), estimator)
    assert before <= estimator.current_watermark().micros / 1e6 <= time.time()


def test_process_claims_whole_batches_of_its_restriction(test_set: MnistData) -> None:
    fn = _ReplayFn(_config(batch_size=100, num_images=10000))
    assert fn.initial_restriction(0.0) == OffsetRange(0, 100)
    out, tracker = _run_process(fn, time.time(), OffsetRange(2, 4))
    batches = [tv.value for tv in out]
    assert [b.start for b in batches] == [200, 300]
    np.testing.assert_array_equal(batches[1].labels, test_set.labels[300:400])
    for tv in out:  # event time = emission wall time
        assert tv.timestamp.micros == pytest.approx(tv.value.emitted_at * 1e6, abs=1)
    assert tracker.deferred_status() is None
    tracker.check_done()


def test_rate_limit_defers_the_remainder() -> None:
    fn = _ReplayFn(_config(batch_size=10, num_images=100, rate=10.0))  # 1 batch per s
    out, tracker = _run_process(fn, time.time(), OffsetRange(0, 10))
    assert [tv.value.start for tv in out] == [0]  # batch 1 is due a second later
    status: Any = tracker.deferred_status()
    residual, delay = status
    assert residual == OffsetRange(1, 10)
    assert 0 < delay.micros <= 1_000_000


def test_endless_replay_checkpoints_and_loops(test_set: MnistData) -> None:
    fn = _EndlessReplayFn(_config(batch_size=1000, num_images=0, max_call_seconds=0.0))
    assert getattr(_EndlessReplayFn.process, "unbounded_per_element", False)
    out, tracker = _run_process(fn, time.time(), OffsetRange(10, ENDLESS_BATCHES))
    assert len(out) == 1  # one batch, then a checkpoint without delay
    batch: ImageBatch = out[0].value
    assert batch.start == 10000  # sequence number 10000 is test image 0 again
    np.testing.assert_array_equal(batch.labels, test_set.labels[:1000])
    status: Any = tracker.deferred_status()
    residual, _ = status
    assert residual == OffsetRange(11, ENDLESS_BATCHES)


def test_endless_replay_is_unbounded() -> None:
    p = beam.Pipeline()
    assert not (p | ReplayMnist(num_images=0)).is_bounded
    assert (beam.Pipeline() | ReplayMnist(num_images=10)).is_bounded


def _replay(runner: str, **kw: Any) -> tuple[beam.Pipeline, beam.PCollection]:
    p = beam.Pipeline(options=PipelineOptions(["--runner=%s" % runner]))
    return p, p | ReplayMnist(**kw)


@pytest.mark.parametrize("rate", [0.0, 5000.0])
def test_bounded_replay_on_beam(beam_runner: str, rate: float, test_set: MnistData) -> None:
    labels = test_set.labels

    class _Stamp(beam.DoFn):
        def process(self, b: ImageBatch, ts: Any = beam.DoFn.TimestampParam) -> Any:
            yield (b.start, len(b), abs(ts.micros - b.emitted_at * 1e6) <= 1,
                   bool(np.array_equal(b.labels, labels[b.start % 10000:][:len(b)])))

    def check(rows: list[tuple[int, int, bool, bool]]) -> None:
        rows = sorted(rows)
        assert [(s, n) for s, n, _, _ in rows] == [(0, 100), (100, 100), (200, 50)]
        assert all(stamped and same for _, _, stamped, same in rows)

    p, batches = _replay(beam_runner, batch_size=100, num_images=250, rate=rate)
    assert_that(batches | beam.ParDo(_Stamp()), check)
    p.run().wait_until_finish()


def test_replay_loops_over_the_set(beam_runner: str, test_set: MnistData) -> None:
    first = test_set.labels[:50].copy()

    def check(batches: list[list[ImageBatch]]) -> None:
        last = max(batches[0], key=lambda b: b.start)
        assert (last.start, len(last)) == (10000, 50)
        np.testing.assert_array_equal(last.labels, first)

    p, batches = _replay(beam_runner, batch_size=1000, num_images=10050)
    assert_that(batches | beam.combiners.ToList(), check)
    p.run().wait_until_finish()
