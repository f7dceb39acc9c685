"""Streaming in the element manager: TestStream scripts, a test clock, state
holds, watermark propagation (plain string ids, a fake clock, no processes)."""
from __future__ import annotations

import pytest

from beam_gpu_runner.engine.element_manager import ElementManager
from beam_gpu_runner.engine.events import (
    BundleSucceeded, JobFinished, Tick, TimerUpdate)
from beam_gpu_runner.engine.graph import (
    InputKind, InputSpec, StageGraph, StageSpec, TimerFamily)
from beam_gpu_runner.engine.test_stream_script import (
    AdvanceProcessingTime, AdvanceWatermark, EmitElements, TestStreamScript)
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP

from .fakes import TestingClock, runs


def ts_graph(**grouping_kw):
    """TestStream -> Group (keyed timers, state holds) -> Sink."""
    return StageGraph.of([
        StageSpec("Group", (InputSpec("in_ts", "ts", InputKind.STREAM),), ("g",),
                  timer_families=(TimerFamily("event"),
                                  TimerFamily("proc", processing_time=True)),
                  stateful=True),
        StageSpec("Sink", (InputSpec("in_g", "g", InputKind.STREAM),)),
    ])


def make(script, graph=None):
    clock = TestingClock()
    em = ElementManager(graph or ts_graph(), clock)
    em.add_test_stream(script)
    return em, clock


def test_script_events_apply_only_when_quiet():
    em, _ = make(TestStreamScript(["ts"], [
        EmitElements("ts", "e1"), AdvanceWatermark(10), EmitElements("ts", "e2")]))
    [g1] = runs(em.start())
    assert g1.inputs == {"in_ts": ("e1",)} and g1.hold == MIN_TIMESTAMP
    assert em.input_watermark("Group") == MIN_TIMESTAMP
    # e1 done: watermark moves to 10, then e2 comes, held at 10.
    [g2] = runs(em.handle(BundleSucceeded(g1.id)))
    assert g2.inputs == {"in_ts": ("e2",)} and g2.hold == 10
    assert em.input_watermark("Group") == 10
    assert em.handle(BundleSucceeded(g2.id)) == [JobFinished()]
    assert em.watermark("Sink") == MAX_TIMESTAMP


def test_state_holds_keep_the_output_watermark_back():
    em, _ = make(TestStreamScript(["ts"], [
        EmitElements("ts", "e1"), AdvanceWatermark(100), AdvanceWatermark(200)]))
    [g1] = runs(em.start())
    out = em.handle(BundleSucceeded(
        g1.id, holds={"k": 50},
        timers=(TimerUpdate("event", "k", "k", fire_at=150, hold=MAX_TIMESTAMP),)))
    # The script ran to 100 and stopped: nothing to fire yet, nothing in flight,
    # so it went on to 200 and the timer fired.
    [fired] = runs(out)
    assert fired.timers == {"event": ("k",)}
    assert em.input_watermark("Group") == 200
    assert em.watermark("Group") == 50          # the state hold
    out = em.handle(BundleSucceeded(fired.id, produced={"g": ("pane",)},
                                    holds={"k": MAX_TIMESTAMP}))
    [sink] = runs(out)
    assert sink.hold == 50
    assert em.watermark("Group") == 200         # hold gone; the script is at 200
    assert em.handle(BundleSucceeded(sink.id)) == [JobFinished()]
    assert em.watermark("Group") == MAX_TIMESTAMP


def test_processing_time_is_a_test_clock_under_a_test_stream():
    em, clock = make(TestStreamScript(["ts"], [
        EmitElements("ts", "e1"), AdvanceProcessingTime(5.0), EmitElements("ts", "e2")]))
    start = em.now()
    [g1] = runs(em.start())
    clock.now += 100.0                          # real time means nothing here
    assert em.now() == start
    out = em.handle(BundleSucceeded(g1.id, timers=(
        TimerUpdate("proc", "k", "k", fire_at=int((start + 3) * 1e6),
                    hold=MAX_TIMESTAMP),)))
    # Advancing the test clock by 5 s fires the timer before e2 arrives.
    [fired] = runs(out)
    assert fired.timers == {"proc": ("k",)} and em.now() == start + 5.0
    assert em.next_wakeup() is None
    [g2] = runs(em.handle(BundleSucceeded(fired.id)))
    assert g2.inputs == {"in_ts": ("e2",)}
    assert em.handle(BundleSucceeded(g2.id)) == [JobFinished()]


def test_the_test_clock_starts_at_the_epoch_whatever_the_real_clock_says():
    em, clock = make(TestStreamScript(["ts"], [
        AdvanceProcessingTime(5.0), EmitElements("ts", "e1")]))
    assert clock.now == 1000.0 and em.now() == 0.0
    [g1] = runs(em.start())
    assert em.now() == 5.0
    # A processing-time timer at 10 s (test time), not at wall time.
    out = em.handle(BundleSucceeded(g1.id, timers=(
        TimerUpdate("proc", "k", "k", fire_at=10_000_000, hold=MAX_TIMESTAMP),)))
    assert out == [JobFinished()]   # never reached: dropped at the end


def test_processing_timers_left_at_the_end_of_a_test_stream_are_dropped():
    em, _ = make(TestStreamScript(["ts"], [EmitElements("ts", "e1")]))
    [g1] = runs(em.start())
    out = em.handle(BundleSucceeded(g1.id, timers=(
        TimerUpdate("proc", "k", "k", fire_at=int((em.now() + 60) * 1e6),
                    hold=MAX_TIMESTAMP),)))
    assert out == [JobFinished()]


def test_a_second_test_stream_or_a_produced_buffer_is_refused():
    em, _ = make(TestStreamScript(["ts"], []))
    with pytest.raises(ValueError, match="at most one TestStream"):
        em.add_test_stream(TestStreamScript(["other"], []))
    em2 = ElementManager(ts_graph(), TestingClock())
    with pytest.raises(ValueError, match="already has producers"):
        em2.add_test_stream(TestStreamScript(["g"], []))


def test_script_refuses_a_receding_watermark_and_unknown_buffers():
    script = TestStreamScript(["ts", "ts2"], [
        AdvanceWatermark(10, ("ts",)), AdvanceWatermark(5, ("ts2",)), AdvanceWatermark(5)])
    script.pop()
    script.pop()
    assert (script.watermark("ts"), script.watermark("ts2")) == (10, 5)
    with pytest.raises(ValueError, match="only advance"):
        script.pop()
    with pytest.raises(ValueError, match="not one of the stream's outputs"):
        TestStreamScript(["ts"], [EmitElements("nope", "x")])


def test_watermark_propagates_through_stages_with_residual_holds():
    clock = TestingClock()
    em = ElementManager(StageGraph.of([
        StageSpec("Src", (InputSpec("read", "impulse", InputKind.IMPULSE),), ("a",)),
        StageSpec("Map", (InputSpec("in_a", "a", InputKind.STREAM),), ("b",)),
        StageSpec("Sink", (InputSpec("in_b", "b", InputKind.STREAM),)),
    ]), clock)
    em.add_initial("Src", {"read": ("i",)})
    [src] = runs(em.start())
    out = runs(em.handle(BundleSucceeded(
        src.id, produced={"a": ("x",)}, residuals={"read": ("rest",)},
        residual_hold=1_000_000, resume_at=clock.now + 1.0)))
    [m] = out
    assert em.watermark("Src") == 1_000_000
    [s] = runs(em.handle(BundleSucceeded(m.id, produced={"b": ("y",)})))
    assert em.watermark("Map") == 1_000_000      # Map is idle: follows its input
    assert em.watermark("Sink") == MIN_TIMESTAMP or em.watermark("Sink") <= 1_000_000
    assert runs(em.handle(BundleSucceeded(s.id))) == []
    assert em.watermark("Sink") == 1_000_000
    clock.now += 1.0
    [again] = runs(em.handle(Tick()))
    assert again.stage == "Src" and again.hold == 1_000_000
    assert em.handle(BundleSucceeded(again.id)) == [JobFinished()]


def test_unread_input_holds_the_consumers_input_watermark():
    em, _ = make(TestStreamScript(["ts"], [
        EmitElements("ts", "e1"), AdvanceWatermark(10), EmitElements("ts", "late")]))
    [g1] = runs(em.start())
    [g2] = runs(em.handle(BundleSucceeded(g1.id)))
    # "late" was delivered at 10; while Group has not read it, Group's input
    # watermark (what it judges lateness by) stays at 10, not at the stream's.
    assert em.input_watermark("Group") == 10
    assert em.handle(BundleSucceeded(g2.id)) == [JobFinished()]


def test_dropping_final_processing_timers_releases_their_holds():
    """Gen's processing-time timer holds its output at 0 until the test clock
    ends; once it is dropped, Group's input watermark reaches MAX and its
    event-time timer (at 16) fires instead of the job looking stuck."""
    graph = StageGraph.of([
        StageSpec("Gen", (InputSpec("in_ts", "ts", InputKind.STREAM),), ("g",),
                  timer_families=(TimerFamily("proc", processing_time=True),),
                  stateful=True),
        StageSpec("Group", (InputSpec("in_g", "g", InputKind.STREAM),),
                  timer_families=(TimerFamily("event"),), stateful=True),
    ])
    em, _ = make(TestStreamScript(["ts"], [EmitElements("ts", "e1")]), graph)
    [gen] = runs(em.start())
    [group] = runs(em.handle(BundleSucceeded(gen.id, produced={"g": ("x",)}, timers=(
        TimerUpdate("proc", "k", "k", fire_at=10**12, hold=0),))))
    out = runs(em.handle(BundleSucceeded(group.id, timers=(
        TimerUpdate("event", "k", "k", fire_at=16, hold=16),))))
    [fired] = out
    assert fired.stage == "Group" and fired.timers == {"event": ("k",)}
    assert em.watermark("Gen") == MAX_TIMESTAMP
    assert em.handle(BundleSucceeded(fired.id)) == [JobFinished()]


def test_a_timer_family_that_holds_no_watermark():
    graph = StageGraph.of([
        StageSpec("Gen", (InputSpec("in_ts", "ts", InputKind.STREAM),), ("g",),
                  timer_families=(TimerFamily("proc", processing_time=True,
                                              holds_watermark=False),),
                  stateful=True),
        StageSpec("Sink", (InputSpec("in_g", "g", InputKind.STREAM),)),
    ])
    em, _ = make(TestStreamScript(["ts"], [EmitElements("ts", "e1"), AdvanceWatermark(50),
                                           EmitElements("ts", "e2")]), graph)
    [gen] = runs(em.start())
    [gen2] = runs(em.handle(BundleSucceeded(gen.id, timers=(
        TimerUpdate("proc", "k", "k", fire_at=10**12, hold=0),))))
    # The update asked for a hold at 0; the family holds nothing.
    assert em.watermark("Gen") == 50
    assert em.handle(BundleSucceeded(gen2.id)) == [JobFinished()]
