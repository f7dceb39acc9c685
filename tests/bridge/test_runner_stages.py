"""Runner-side stages on the driver thread: no workers (bridge/runner_stages.py)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.transforms import window
from apache_beam.transforms.core import Windowing
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.bridge.buffers import BufferId, BufferKind, Chunks
from beam_gpu_runner.bridge.runner_stages import (
    GROUPING_EVENT_TIMERS, PairWithTimingStage, StreamingGroupByKey, beam_time, engine_time)
from beam_gpu_runner.engine.events import Bundle
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP, StageTime

WINDOW = window.IntervalWindow(0, 10)
PRE = coders.WindowedValueCoder(coders.TupleCoder([coders.StrUtf8Coder(), coders.VarIntCoder()]),
                                coders.IntervalWindowCoder())
POST = coders.WindowedValueCoder(
    coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.VarIntCoder())]),
    coders.IntervalWindowCoder())


def elements(*pairs, ts=1) -> Chunks:
    impl = PRE.get_impl()
    data = b"".join(impl.encode_nested(WindowedValue(p, Timestamp(ts), (WINDOW,)))
                    for p in pairs)
    return Chunks.of([data], impl, len(pairs))


def panes(event) -> list:
    out = []
    for payloads in event.produced.values():
        for chunks in payloads:
            for chunk in chunks:
                out += [(wv.value[0], list(wv.value[1]))
                        for wv in POST.get_impl().decode_all(chunk)]
    return out


def grouping() -> StreamingGroupByKey:
    return StreamingGroupByKey(BufferId.group("gbk"), Windowing(window.FixedWindows(10)),
                               PRE, POST)


def test_a_window_fires_when_its_timer_does_and_the_hold_follows_the_state():
    stage = grouping()
    first = stage.run(Bundle("b1", "gbk[group:gbk]", {"in": (elements(("a", 1), ("a", 2)),)}),
                      StageTime(MIN_TIMESTAMP, MIN_TIMESTAMP, 0.0))
    assert panes(first) == []                      # nothing is due yet
    event_timers = [u for u in first.timers if u.family == GROUPING_EVENT_TIMERS]
    [timer] = event_timers
    assert timer.fire_at == engine_time(WINDOW.end)   # Beam's trigger driver's timer
    assert first.holds and all(h < MAX_TIMESTAMP for h in first.holds.values())
    fired = stage.run(Bundle("b2", "gbk[group:gbk]", {},
                             timers={GROUPING_EVENT_TIMERS: (timer.key,)}),
                      StageTime(MAX_TIMESTAMP, MAX_TIMESTAMP, 0.0))
    assert panes(fired) == [("a", [1, 2])]
    assert list(fired.produced) == [str(BufferId(BufferKind.GROUPED, "gbk"))]
    assert all(h == MAX_TIMESTAMP for h in fired.holds.values())   # the state is gone


def test_pair_with_timing_uses_the_stages_time():
    impl = coders.WindowedValueCoder(coders.StrUtf8Coder(),
                                     coders.GlobalWindowCoder()).get_impl()
    out_impl = coders.WindowedValueCoder(coders.PickleCoder(),
                                         coders.GlobalWindowCoder()).get_impl()
    stage = PairWithTimingStage(BufferId(BufferKind.TIMED, "t"), impl, out_impl)
    data = impl.encode_nested(window.GlobalWindows.windowed_value("x"))
    event = stage.run(Bundle("b1", "timing[t]", {"in": (Chunks.of([data], impl, 1),)}),
                      StageTime(MIN_TIMESTAMP, 5_000_000, 7.0))
    [(name, (chunks,))] = event.produced.items()
    [paired] = list(out_impl.decode_all(chunks.chunks[0]))
    element, timing = paired.value
    assert element == "x" and timing.processing_time == Timestamp(7)
    assert timing.watermark == Timestamp(5)


def test_time_bounds_map_both_ways():
    assert beam_time(MAX_TIMESTAMP) == beam.utils.timestamp.MAX_TIMESTAMP
    assert engine_time(beam_time(MIN_TIMESTAMP)) == MIN_TIMESTAMP
    assert engine_time(Timestamp(3)) == 3_000_000
