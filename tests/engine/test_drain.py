"""Draining in the element manager (plain string ids, a fake clock, no processes).

A source stage ``Src`` reads an unbounded restriction: each bundle hands back
a residual with its watermark and a requested delay. ``Win`` holds windowed
output (BARRIER) until its input watermark passes the window's end; ``Proc``
is a stateful stage with an event- and a processing-time timer.
"""
from __future__ import annotations

from beam_gpu_runner.engine.element_manager import ElementManager
from beam_gpu_runner.engine.events import (
    BundleSucceeded, Drain, JobFinished, Tick, TimerUpdate, WindowedPayload)
from beam_gpu_runner.engine.graph import (
    InputKind, InputSpec, StageGraph, StageSpec, TimerFamily)
from beam_gpu_runner.engine.test_stream_script import (
    AdvanceWatermark, EmitElements, TestStreamScript)
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP

from .fakes import TestingClock, runs

SECOND = 1_000_000


def source_graph(proc_timers=(TimerFamily("event"), TimerFamily("proc", processing_time=True))):
    return StageGraph.of([
        StageSpec("Src", (InputSpec("read", "impulse", InputKind.IMPULSE),), ("a", "p")),
        StageSpec("Win", (InputSpec("in_a", "a", InputKind.BARRIER),), ("w",)),
        StageSpec("Proc", (InputSpec("in_p", "p", InputKind.STREAM),),
                  timer_families=tuple(proc_timers), stateful=True),
        StageSpec("Sink", (InputSpec("in_w", "w", InputKind.STREAM),)),
    ])


def started(graph=None):
    clock = TestingClock()
    em = ElementManager(graph or source_graph(), clock)
    em.add_initial("Src", {"read": ("restriction",)})
    [src] = runs(em.start())
    return em, clock, src


def read_some(em, clock, src, window_end, watermark):
    """Src read up to ``watermark``: a window's worth of output, a residual
    that asks to resume in 1 s."""
    return runs(em.handle(BundleSucceeded(
        src.id, produced={"a": (WindowedPayload("w%d" % window_end, window_end),)},
        residuals={"read": ("rest@%d" % watermark,)}, residual_hold=watermark,
        resume_at=clock.now + 1.0)))


def test_a_drain_truncates_the_waiting_residual_at_once_and_ends_the_job():
    em, clock, src = started()
    # The first window fires as the watermark passes its end; the source waits.
    [win1] = read_some(em, clock, src, window_end=SECOND - 1, watermark=SECOND)
    assert win1.stage == "Win" and not win1.drain
    sinks = runs(em.handle(BundleSucceeded(win1.id, produced={"w": ("pane1",)})))
    assert em.next_wakeup() == clock.now + 1.0

    out = runs(em.handle(Drain()))
    # No waiting for the requested delay: the residual runs now, to truncate.
    [truncate] = [b for b in out if b.stage == "Src"]
    assert truncate.drain and truncate.residual and truncate.inputs == {"read": ("rest@1000000",)}
    assert em.draining
    assert [b.stage for b in out] == ["Src"]
    # Truncated to nothing: no residual; the rest of the read ends the input.
    out = runs(em.handle(BundleSucceeded(truncate.id, produced={
        "a": (WindowedPayload("w-partial", 2 * SECOND - 1),)})))
    [win2] = [b for b in out if b.stage == "Win"]
    assert win2.inputs == {"in_a": ("w-partial",)} and win2.drain
    assert em.watermark("Src") == MAX_TIMESTAMP
    out = runs(em.handle(BundleSucceeded(win2.id, produced={"w": ("pane2",)})))
    for bundle in sinks + out:
        final = em.handle(BundleSucceeded(bundle.id))
    assert final == [JobFinished()]
    assert em.watermark("Sink") == MAX_TIMESTAMP


def test_a_residual_of_a_bundle_in_flight_at_the_drain_is_truncated_at_once():
    em, clock, src = started()
    assert runs(em.handle(Drain())) == []          # src is in flight, not drained
    assert not src.drain
    out = read_some(em, clock, src, window_end=SECOND - 1, watermark=SECOND)
    [truncate] = [b for b in out if b.stage == "Src"]
    assert truncate.drain and truncate.residual     # despite resume_at in 1 s


def test_a_truncated_restriction_that_checkpoints_keeps_its_delay():
    em, clock, src = started()
    em.handle(Drain())
    [truncate] = [b for b in read_some(em, clock, src, SECOND - 1, SECOND)
                  if b.stage == "Src"]
    # Bounded work left after truncation asks to resume later: it may.
    out = runs(em.handle(BundleSucceeded(
        truncate.id, residuals={"read": ("bounded-rest",)}, residual_hold=SECOND,
        resume_at=clock.now + 1.0)))
    assert [b for b in out if b.stage == "Src"] == []
    assert em.next_wakeup() == clock.now + 1.0
    clock.now += 1.0
    [again] = [b for b in runs(em.handle(Tick())) if b.stage == "Src"]
    assert again.drain and again.inputs == {"read": ("bounded-rest",)}


def test_event_timers_fire_and_processing_timers_are_dropped_once_input_is_complete():
    em, clock, src = started()
    out = runs(em.handle(BundleSucceeded(
        src.id, produced={"p": ("e",)}, residuals={"read": ("rest",)},
        residual_hold=SECOND, resume_at=clock.now + 1.0)))
    [proc] = [b for b in out if b.stage == "Proc"]
    em.handle(BundleSucceeded(proc.id, timers=(
        TimerUpdate("event", "k", "ev", fire_at=5 * SECOND, hold=5 * SECOND),
        TimerUpdate("proc", "k", "pt", fire_at=int((clock.now + 3600) * 1e6),
                    hold=SECOND))))
    [truncate] = [b for b in runs(em.handle(Drain())) if b.stage == "Src"]
    out = runs(em.handle(BundleSucceeded(truncate.id)))
    # Input complete: the event-time timer fires (the window-end kind of timer).
    [fired] = [b for b in out if b.stage == "Proc"]
    assert fired.timers == {"event": ("ev",)} and fired.drain
    # The processing-time timer an hour away is dropped instead of waited for.
    assert em.handle(BundleSucceeded(fired.id)) == [JobFinished()]


def test_a_processing_timer_that_re_arms_itself_does_not_keep_a_drained_job_alive():
    em, clock, src = started()
    out = runs(em.handle(BundleSucceeded(src.id, produced={"p": ("e",)})))
    [proc] = [b for b in out if b.stage == "Proc"]
    out = runs(em.handle(BundleSucceeded(proc.id, timers=(
        TimerUpdate("proc", "k", "pt", fire_at=int(clock.now * 1e6)),))))
    # Not draining: a due processing-time timer fires and re-arms, forever.
    for _ in range(3):
        [fired] = out
        assert fired.timers == {"proc": ("pt",)}
        out = runs(em.handle(BundleSucceeded(fired.id, timers=(
            TimerUpdate("proc", "k", "pt", fire_at=int(clock.now * 1e6)),))))
    [fired] = out
    assert runs(em.handle(Drain())) == []
    out = em.handle(BundleSucceeded(fired.id, timers=(
        TimerUpdate("proc", "k", "pt", fire_at=int((clock.now + 0.1) * 1e6)),)))
    assert out == [JobFinished()]


def test_draining_a_test_stream_drops_its_remaining_events():
    graph = StageGraph.of([StageSpec("Sink", (InputSpec("in_ts", "ts", InputKind.STREAM),))])
    em = ElementManager(graph, TestingClock())
    em.add_test_stream(TestStreamScript(["ts"], [
        EmitElements("ts", "e1"), AdvanceWatermark(10), EmitElements("ts", "e2")]))
    [e1] = runs(em.start())
    em.handle(Drain())
    assert em.handle(BundleSucceeded(e1.id)) == [JobFinished()]   # e2 never read
    assert em.watermark("Sink") == MAX_TIMESTAMP


def test_drain_is_idempotent_and_ignored_once_the_job_ended():
    em, clock, src = started()
    em.handle(Drain())
    assert runs(em.handle(Drain())) == []
    assert em.handle(BundleSucceeded(src.id)) == [JobFinished()]
    assert em.handle(Drain()) == []
    assert "(draining)" in em.describe()

