"""Element manager tests: plain string ids and payloads, a fake clock, no processes."""
from __future__ import annotations

import pytest

from beam_gpu_runner.engine.element_manager import ElementManager
from beam_gpu_runner.engine.events import (
    BundleFailed, BundleSucceeded, JobFailed, JobFinished, Tick, TimerUpdate,
    WindowedPayload)
from beam_gpu_runner.engine.graph import (
    GraphError, InputKind, InputSpec, StageGraph, StageSpec, TimerFamily)
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP

from .fakes import TestingClock, runs


def stage(name, inputs=(), outputs=(), side_inputs=(), timers=(), stateful=False):
    return StageSpec(name=name, inputs=tuple(inputs), outputs=tuple(outputs),
                     side_inputs=tuple(side_inputs), timer_families=tuple(timers),
                     stateful=stateful)


def imp(t="read"):
    return InputSpec(t, "impulse", InputKind.IMPULSE)


def stream(buf, t=None):
    return InputSpec(t or "in_" + buf, buf, InputKind.STREAM)


def barrier(buf, t=None):
    return InputSpec(t or "in_" + buf, buf, InputKind.BARRIER)


def make(stages, **kw):
    clock = TestingClock()
    em = ElementManager(StageGraph.of(stages), clock, **kw)
    return em, clock


def test_linear_stream_pipeline_hands_off_per_bundle():
    em, _ = make([stage("A", [imp()], ["a"]), stage("B", [stream("a")], ["b"])])
    em.add_initial("A", {"read": ("impulse",)})
    [a] = runs(em.start())
    assert a.stage == "A" and a.inputs == {"read": ("impulse",)}
    out = em.handle(BundleSucceeded(a.id, produced={"a": ("p1", "p2")}))
    bs = runs(out)
    assert [(b.stage, b.inputs) for b in bs] == [
        ("B", {"in_a": ("p1",)}), ("B", {"in_a": ("p2",)})]
    assert em.watermark("A") == MAX_TIMESTAMP
    assert em.watermark("B") == MIN_TIMESTAMP
    assert em.handle(BundleSucceeded(bs[0].id)) == []
    assert em.handle(BundleSucceeded(bs[1].id)) == [JobFinished()]
    assert em.watermark("B") == MAX_TIMESTAMP


def test_barrier_waits_for_all_producer_bundles():
    em, _ = make([
        stage("A", [imp()], ["a"]),
        stage("B", [stream("a")], ["g"]),
        stage("C", [barrier("g")], []),
    ])
    em.add_initial("A", {"read": ("i",)})
    [a] = runs(em.start())
    b1, b2 = runs(em.handle(BundleSucceeded(a.id, produced={"a": ("x", "y")})))
    assert runs(em.handle(BundleSucceeded(b1.id, produced={"g": ("g1",)}))) == []
    [c] = runs(em.handle(BundleSucceeded(b2.id, produced={"g": ("g2",)})))
    assert c.stage == "C" and c.inputs == {"in_g": ("g1", "g2")}
    assert em.handle(BundleSucceeded(c.id)) == [JobFinished()]


def test_side_inputs_gate_the_consumer_until_complete():
    em, _ = make([
        stage("Main", [imp("r1")], ["m"]),
        stage("Side", [imp("r2")], ["s"]),
        stage("Use", [stream("m")], [], side_inputs=["s"]),
    ])
    em.add_initial("Main", {"r1": ("i",)})
    em.add_initial("Side", {"r2": ("i",)})
    main, side = runs(em.start())
    assert runs(em.handle(BundleSucceeded(main.id, produced={"m": ("x",)}))) == []
    [use] = runs(em.handle(BundleSucceeded(side.id, produced={"s": ("s",)})))
    assert use.stage == "Use"
    assert em.handle(BundleSucceeded(use.id)) == [JobFinished()]


def test_residuals_hold_the_watermark_and_run_again():
    em, _ = make([stage("Sdf", [imp()], ["o"]), stage("Sink", [stream("o")])])
    em.add_initial("Sdf", {"read": ("r",)})
    [s] = runs(em.start())
    out = runs(em.handle(BundleSucceeded(
        s.id, produced={"o": ("o1",)}, residuals={"read": ("rest",)},
        residual_hold=5)))
    stages = sorted(b.stage for b in out)
    assert stages == ["Sdf", "Sink"]
    assert em.watermark("Sdf") == 5
    rest = next(b for b in out if b.stage == "Sdf")
    assert rest.inputs == {"read": ("rest",)} and rest.hold == 5


def test_requested_delay_is_honoured_with_the_clock():
    em, clock = make([stage("Sdf", [imp()], [])])
    em.add_initial("Sdf", {"read": ("r",)})
    [s] = runs(em.start())
    assert em.handle(BundleSucceeded(
        s.id, residuals={"read": ("rest",)}, resume_at=clock.now + 1.0)) == []
    assert em.next_wakeup() == clock.now + 1.0
    assert em.handle(Tick()) == []           # not yet: no busy loop
    clock.now += 1.0
    [again] = runs(em.handle(Tick()))
    assert again.inputs == {"read": ("rest",)}
    assert em.handle(BundleSucceeded(again.id)) == [JobFinished()]


def test_event_time_timers_fire_after_input_drains_and_hold_watermark():
    em, _ = make([
        stage("A", [imp()], ["a"]),
        stage("T", [stream("a")], ["t"], timers=[TimerFamily("f")], stateful=True),
        stage("D", [stream("t")]),
    ])
    em.add_initial("A", {"read": ("i",)})
    [a] = runs(em.start())
    [t] = runs(em.handle(BundleSucceeded(a.id, produced={"a": ("x",)})))
    assert t.stage == "T" and t.inputs == {"in_a": ("x",)}
    [fire] = runs(em.handle(BundleSucceeded(
        t.id, timers=(TimerUpdate("f", "k1", "timers1", fire_at=10, hold=7),))))
    assert fire.timers == {"f": ("timers1",)} and fire.inputs == {}
    assert em.watermark("T") == 7
    [d] = runs(em.handle(BundleSucceeded(fire.id, produced={"t": ("out",)})))
    assert em.handle(BundleSucceeded(d.id)) == [JobFinished()]


def test_processing_time_timers_fire_on_the_clock():
    em, clock = make([stage("P", [imp()], [], timers=[TimerFamily("pt", True)],
                            stateful=True)])
    em.add_initial("P", {"read": ("i",)})
    [p] = runs(em.start())
    fire_at = int((clock.now + 2) * 1e6)
    assert em.handle(BundleSucceeded(
        p.id, timers=(TimerUpdate("pt", "k", "t", fire_at=fire_at, hold=MIN_TIMESTAMP),))) == []
    clock.now += 2
    [fire] = runs(em.handle(Tick()))
    assert fire.timers == {"pt": ("t",)}


def test_stateful_stage_runs_one_bundle_at_a_time_in_order():
    em, _ = make([stage("A", [imp()], ["a"]), stage("S", [stream("a")], stateful=True)])
    em.add_initial("A", {"read": ("i",)})
    [a] = runs(em.start())
    [s1] = runs(em.handle(BundleSucceeded(a.id, produced={"a": ("x", "y")})))
    assert s1.inputs == {"in_a": ("x",)}
    [s2] = runs(em.handle(BundleSucceeded(s1.id)))
    assert s2.inputs == {"in_a": ("y",)}
    assert em.handle(BundleSucceeded(s2.id)) == [JobFinished()]


def test_windowed_barrier_input_is_released_as_the_watermark_passes():
    em, _ = make([
        stage("Src", [imp()], ["g"]),
        stage("Gbk", [barrier("g")], []),
    ])
    em.add_initial("Src", {"read": ("i",)})
    [src] = runs(em.start())
    out = runs(em.handle(BundleSucceeded(
        src.id, produced={"g": (WindowedPayload("w1", 100), WindowedPayload("w2", 200))},
        residuals={"read": ("r",)}, residual_hold=150)))
    assert em.watermark("Src") == 150
    # Window 1 ends at 100 <= 150: it fires while the source still runs.
    [rest, w1] = sorted(out, key=lambda b: b.stage, reverse=True)
    assert w1.stage == "Gbk" and w1.inputs == {"in_g": ("w1",)}
    assert rest.stage == "Src"
    assert em.handle(BundleSucceeded(w1.id)) == []
    [w2] = runs(em.handle(BundleSucceeded(rest.id)))
    assert w2.inputs == {"in_g": ("w2",)}
    assert em.handle(BundleSucceeded(w2.id)) == [JobFinished()]


def test_consumer_bundles_hold_at_the_producers_watermark():
    em, _ = make([stage("Src", [imp()], ["a"]), stage("B", [stream("a")])])
    em.add_initial("Src", {"read": ("i",)})
    [src] = runs(em.start())
    [rest, b] = sorted(runs(em.handle(BundleSucceeded(
        src.id, produced={"a": ("x",)}, residuals={"read": ("r",)}, residual_hold=70))),
        key=lambda x: x.stage, reverse=True)
    assert b.hold == MIN_TIMESTAMP          # produced while Src's watermark was MIN
    [b2] = [x for x in runs(em.handle(BundleSucceeded(
        rest.id, produced={"a": ("y",)}, residuals={"read": ("r",)}, residual_hold=90)))
        if x.stage == "B"]
    assert b2.hold == 70
    em.handle(BundleSucceeded(b.id))
    assert em.watermark("B") == 70


def test_lost_worker_retries_then_fails_after_max_attempts():
    em, _ = make([stage("A", [imp()], [])], max_attempts=2)
    em.add_initial("A", {"read": ("i",)})
    [a] = runs(em.start())
    [again] = runs(em.handle(BundleFailed(a.id, "worker lost", retriable=True)))
    assert again.id == a.id and again.attempt == 2
    [failed] = em.handle(BundleFailed(again.id, "worker lost", retriable=True))
    assert isinstance(failed, JobFailed) and failed.stage == "A"
    assert "failed 2 times" in failed.error and "max_bundle_attempts=2" in failed.error


def test_user_error_fails_the_job_at_once():
    em, _ = make([stage("A", [imp()], [])])
    em.add_initial("A", {"read": ("i",)})
    [a] = runs(em.start())
    [failed] = em.handle(BundleFailed(a.id, "ZeroDivisionError in step X", retriable=False))
    assert failed == JobFailed(stage="A", error="ZeroDivisionError in step X")
    assert em.handle(Tick()) == []


def test_side_input_without_producer_counts_as_complete():
    em, _ = make([
        stage("Never", [stream("nothing")], ["s"]),
        stage("Main", [imp()], ["m"]),
        stage("Use", [stream("m")], [], side_inputs=["s"]),
    ])
    em.add_initial("Main", {"read": ("i",)})
    [main] = runs(em.start())
    [use] = runs(em.handle(BundleSucceeded(main.id, produced={"m": ("x",)})))
    assert em.handle(BundleSucceeded(use.id)) == [JobFinished()]


def test_stuck_graph_is_reported_not_hung():
    # A barrier fed by its own output can never see its watermark pass.
    em, _ = make([
        stage("X", [imp()], ["s2"]),
        stage("Loop", [barrier("s2")], ["s2"]),
    ])
    em.add_initial("X", {"read": ("i",)})
    [x] = runs(em.start())
    [failed] = em.handle(BundleSucceeded(x.id, produced={"s2": ("v",)}))
    assert isinstance(failed, JobFailed) and failed.stage is None
    assert "stuck" in failed.error and "Loop: in_wm=MIN" in failed.error


def test_unknown_bundle_and_stage_errors_name_the_id():
    em, _ = make([stage("A", [imp()], [])])
    with pytest.raises(ValueError, match="'nope' is not in flight"):
        em.handle(BundleSucceeded("nope"))
    with pytest.raises(ValueError, match="unknown stage 'Z'"):
        em.add_initial("Z", {})


def test_duplicate_stage_names_are_rejected():
    with pytest.raises(GraphError, match="duplicate stage names"):
        StageGraph.of([stage("A", [imp()]), stage("A", [imp()])])


def test_undeclared_timer_family_is_an_error():
    em, _ = make([stage("A", [imp()], [])])
    em.add_initial("A", {"read": ("i",)})
    [a] = runs(em.start())
    with pytest.raises(ValueError, match="undeclared family 'f'"):
        em.handle(BundleSucceeded(a.id, timers=(TimerUpdate("f", "k", "t", 1, 1),)))


def test_timer_updates_replace_and_clear_by_key_across_bundles():
    # A splittable source fused with a stateful DoFn: each residual bundle
    # updates the timers the previous one set.
    em, _ = make([stage("T", [imp()], [], timers=[TimerFamily("f")], stateful=True)])
    em.add_initial("T", {"read": ("i",)})
    [t] = runs(em.start())
    [t2] = runs(em.handle(BundleSucceeded(t.id, residuals={"read": ("more",)}, timers=(
        TimerUpdate("f", "k1", "k1@10", fire_at=10, hold=10),
        TimerUpdate("f", "k2", "k2@20", fire_at=20, hold=20),
    ))))
    assert t2.inputs == {"read": ("more",)}
    # The second bundle resets k1 and clears k2: only one timer fires, once.
    [fire] = runs(em.handle(BundleSucceeded(t2.id, timers=(
        TimerUpdate("f", "k1", "k1@30", fire_at=30, hold=30),
        TimerUpdate("f", "k2", None),
    ))))
    assert fire.timers == {"f": ("k1@30",)} and fire.hold == 30
    assert em.handle(BundleSucceeded(fire.id)) == [JobFinished()]


def test_event_timers_wait_for_the_input_watermark():
    em, _ = make([
        stage("Src", [imp()], ["a"]),
        stage("T", [stream("a")], [], timers=[TimerFamily("f")]),
    ])
    em.add_initial("Src", {"read": ("i",)})
    [src] = runs(em.start())
    out = runs(em.handle(BundleSucceeded(
        src.id, produced={"a": ("x",)}, residuals={"read": ("rest",)},
        residual_hold=50)))
    t = next(b for b in out if b.stage == "T")
    rest = next(b for b in out if b.stage == "Src")
    # T's own unread input (held at Src's watermark when it was produced)
    # holds T's input watermark until T has read it.
    assert em.input_watermark("T") == MIN_TIMESTAMP
    [early] = runs(em.handle(BundleSucceeded(t.id, timers=(
        TimerUpdate("f", "k", "early", fire_at=40, hold=40),
        TimerUpdate("f", "j", "late", fire_at=60, hold=60),
    ))))
    assert early.timers == {"f": ("early",)}
    assert em.input_watermark("T") == 50
    assert em.watermark("T") == 40          # the firing bundle holds it
    assert runs(em.handle(BundleSucceeded(early.id))) == []
    assert em.watermark("T") == 50          # "late" waits for the watermark
    [late] = runs(em.handle(BundleSucceeded(rest.id)))
    assert late.timers == {"f": ("late",)}
