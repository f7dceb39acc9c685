"""Pools, dividing ready work and splitting running work: string ids, a fake clock."""
from __future__ import annotations

import pytest

from beam_gpu_runner.engine.element_manager import ElementManager
from beam_gpu_runner.engine.events import (
    BundleFailed, BundleSplit, BundleSucceeded, Drain, JobFinished, SplitBundle,
    SplitRefused, Tick)
from beam_gpu_runner.engine.graph import (
    GraphError, InputKind, InputSpec, StageGraph, StageSpec)
from beam_gpu_runner.engine.sizing import SequenceDivider, SplitPolicy

from .fakes import TestingClock, runs

ITEMS = tuple("e%02d" % i for i in range(96))


def gpu_stage(divisible=True, dynamic_split=True, stateful=False):
    return StageSpec("Gpu", (InputSpec("in", "src", InputKind.STREAM),), (),
                     pool="gpu", divisible=divisible, dynamic_split=dynamic_split,
                     stateful=stateful)


def make(capacity=4, policy=None, **stage_kw):
    clock = TestingClock()
    graph = StageGraph.of([
        StageSpec("Src", (InputSpec("read", "impulse", InputKind.IMPULSE),), ("src",),
                  pool="cpu"),
        gpu_stage(**stage_kw),
    ], pools={"cpu": 1, "gpu": capacity})
    em = ElementManager(graph, clock, divider=SequenceDivider(), split_policy=policy)
    em.add_initial("Src", {"read": (("impulse",),)})
    [src] = runs(em.start())
    return em, clock, src


def splits(instructions):
    return [i for i in instructions if isinstance(i, SplitBundle)]


def items_of(bundles):
    return sorted(x for b in bundles for payload in b.inputs["in"] for x in payload)


def test_a_pool_needs_a_capacity():
    with pytest.raises(GraphError, match="pool 'gpu'"):
        StageGraph.of([gpu_stage()], pools={})


def test_small_output_is_cut_across_every_idle_device():
    em, _, src = make(capacity=4)
    gpu = runs(em.handle(BundleSucceeded(src.id, produced={"src": (ITEMS,)})))
    assert len(gpu) == 4
    assert [len(b.inputs["in"][0]) for b in gpu] == [24, 24, 24, 24]
    assert items_of(gpu) == sorted(ITEMS)
    for b in gpu[:-1]:
        assert em.handle(BundleSucceeded(b.id)) == []
    assert em.handle(BundleSucceeded(gpu[-1].id)) == [JobFinished()]
    assert em.stage_stats("Gpu").done == 4


def test_no_more_bundles_start_than_the_pool_has_places():
    em, _, src = make(capacity=2, divisible=False)
    payloads = tuple((x,) for x in ITEMS[:5])
    started = runs(em.handle(BundleSucceeded(src.id, produced={"src": payloads})))
    assert len(started) == 2
    assert em.stage_stats("Gpu").ready == 3
    # A finished bundle frees its place for the next one.
    [nxt] = runs(em.handle(BundleSucceeded(started[0].id)))
    assert nxt.inputs["in"] == (("e02",),)


def test_indivisible_stages_are_not_cut():
    em, _, src = make(capacity=4, divisible=False)
    gpu = runs(em.handle(BundleSucceeded(src.id, produced={"src": (ITEMS,)})))
    assert len(gpu) == 1


def test_a_straggler_is_split_for_idle_places_and_its_residual_divided():
    em, clock, src = make(capacity=4, policy=SplitPolicy(min_runtime_s=0.5))
    first = runs(em.handle(BundleSucceeded(src.id, produced={"src": (ITEMS[:8],)})))
    assert len(first) == 4
    a, b, c, d = first
    em.handle(BundleSucceeded(b.id))
    em.handle(BundleSucceeded(c.id))
    # Three places idle, but `a` and `d` are too young to split.
    assert em.handle(BundleSucceeded(d.id)) == []
    assert em.next_wakeup() == pytest.approx(clock.now + 0.5)
    clock.now += 0.5
    [split] = splits(em.handle(Tick()))
    assert split.bundle_id == a.id and split.fraction_of_remainder == pytest.approx(0.25)
    # While the split is pending it is not asked again.
    assert splits(em.handle(Tick())) == []
    out = runs(em.handle(BundleSplit(a.id, primary={"in": (("e00",),)},
                                     residual={"in": (("e01", "x1", "x2"),)})))
    # The residual is cut for the three idle places.
    assert [b.inputs["in"] for b in out] == [(("e01",),), (("x1",),), (("x2",),)]
    assert em.stage_stats("Gpu").split == 1
    for bundle in out:
        em.handle(BundleSucceeded(bundle.id))
    assert em.handle(BundleSucceeded(a.id)) == [JobFinished()]


def test_a_retry_after_a_split_runs_only_the_primary():
    em, clock, src = make(capacity=2, policy=SplitPolicy(min_runtime_s=0.0))
    [a, b] = runs(em.handle(BundleSucceeded(src.id, produced={"src": (ITEMS[:4],)})))
    [split] = splits(em.handle(BundleSucceeded(b.id)))
    assert split.bundle_id == a.id
    [rest] = runs(em.handle(BundleSplit(a.id, primary={"in": (("e00",),)},
                                        residual={"in": (("e01",),)})))
    [retry] = runs(em.handle(BundleFailed(a.id, "worker died", retriable=True)))
    assert retry.inputs == {"in": (("e00",),)} and retry.attempt == 2


def test_a_refused_split_backs_off_then_gives_up():
    policy = SplitPolicy(min_runtime_s=0.0, retry_after_s=1.0, max_refusals=2)
    em, clock, src = make(capacity=2, policy=policy)
    [a, b] = runs(em.handle(BundleSucceeded(src.id, produced={"src": (ITEMS[:2],)})))
    [split] = splits(em.handle(BundleSucceeded(b.id)))
    assert splits(em.handle(SplitRefused(a.id))) == []
    assert em.next_wakeup() == pytest.approx(clock.now + 1.0)
    clock.now += 1.0
    [again] = splits(em.handle(Tick()))
    em.handle(SplitRefused(again.bundle_id))
    clock.now += 10.0
    assert splits(em.handle(Tick())) == []
    assert em.next_wakeup() is None
    assert em.handle(BundleSucceeded(a.id)) == [JobFinished()]


def test_stages_that_may_not_split_are_never_asked():
    em, clock, src = make(capacity=2, policy=SplitPolicy(min_runtime_s=0.0),
                          dynamic_split=False)
    [a, b] = runs(em.handle(BundleSucceeded(src.id, produced={"src": (ITEMS[:2],)})))
    assert splits(em.handle(BundleSucceeded(b.id))) == []
    assert em.next_wakeup() is None


def test_no_splits_while_draining():
    em, clock, src = make(capacity=2, policy=SplitPolicy(min_runtime_s=0.0))
    [a, b] = runs(em.handle(BundleSucceeded(src.id, produced={"src": (ITEMS[:2],)})))
    em.handle(Drain())
    assert splits(em.handle(BundleSucceeded(b.id))) == []


def test_a_split_of_a_bundle_not_in_flight_is_an_error():
    em, _, src = make()
    with pytest.raises(ValueError, match="not in flight"):
        em.handle(BundleSplit("nope", primary={}, residual={}))


def test_a_refusal_that_comes_after_the_bundle_ended_is_ignored():
    em, _, src = make()
    assert em.handle(SplitRefused(src.id)) == []   # still running: backs off
    em.handle(BundleSucceeded(src.id))
    assert em.handle(SplitRefused(src.id)) == []


def test_a_test_stream_pipeline_keeps_each_events_elements_together():
    from beam_gpu_runner.engine.test_stream_script import EmitElements, TestStreamScript
    clock = TestingClock()
    graph = StageGraph.of([gpu_stage()], pools={"gpu": 4})
    em = ElementManager(graph, clock, divider=SequenceDivider())
    em.add_test_stream(TestStreamScript(["src"], [EmitElements("src", ITEMS[:8], 8)]))
    [bundle] = runs(em.start())
    assert bundle.inputs == {"in": (ITEMS[:8],)}


def checkpointing(policy=None):
    clock = TestingClock()
    graph = StageGraph.of([
        StageSpec("Sdf", (InputSpec("read", "impulse", InputKind.IMPULSE),), ("out",),
                  pool="cpu", checkpoints=True),
        StageSpec("Sink", (InputSpec("in", "out", InputKind.STREAM),), (), pool="cpu"),
    ], pools={"cpu": 1})
    em = ElementManager(graph, clock, divider=SequenceDivider(), split_policy=policy)
    em.add_initial("Sdf", {"read": (("impulse",),)})
    [sdf] = runs(em.start())
    return em, clock, sdf


def test_an_unbounded_splittable_dofn_is_checkpointed_once_it_ran_long_enough():
    em, clock, sdf = checkpointing(SplitPolicy(checkpoint_after_s=1.0))
    assert em.next_wakeup() == pytest.approx(clock.now + 1.0)
    clock.now += 0.5
    assert splits(em.handle(Tick())) == []
    clock.now += 0.5
    [checkpoint] = splits(em.handle(Tick()))
    assert checkpoint == SplitBundle(sdf.id, 0.0)
    assert splits(em.handle(Tick())) == []   # pending: not asked twice
    em.handle(BundleSplit(sdf.id, primary={"read": (("impulse",),)},
                          residual={"read": (("rest",),)}, residual_hold=5_000_000))
    clock.now += 10.0   # the primary is not checkpointed again
    assert splits(em.handle(Tick())) == []
    # Its output is committed when it ends; the remainder runs next, held at the
    # SDK's estimate, not at the first bundle's hold.
    [sink] = runs(em.handle(BundleSucceeded(sdf.id, produced={"out": (("x",),)})))
    assert sink.stage == "Sink"   # downstream first
    [rest] = runs(em.handle(BundleSucceeded(sink.id)))
    assert rest.inputs == {"read": (("rest",),)} and rest.hold == 5_000_000
    assert em.stage_stats("Sdf").output_watermark == 5_000_000


def test_a_refused_checkpoint_is_asked_again_without_giving_up():
    em, clock, sdf = checkpointing(SplitPolicy(checkpoint_after_s=1.0, retry_after_s=0.2,
                                               max_refusals=2))
    clock.now += 1.0
    for backoff in (0.2, 0.4, 0.8, 1.0, 1.0):   # doubling, at most checkpoint_after_s
        [ask] = splits(em.handle(Tick()))
        assert splits(em.handle(SplitRefused(ask.bundle_id))) == []
        assert em.next_wakeup() == pytest.approx(clock.now + backoff)
        clock.now += backoff


def test_a_drain_checkpoints_running_bundles_at_once_and_runs_their_remainder_truncated():
    em, clock, sdf = checkpointing()
    [checkpoint] = splits(em.handle(Drain()))
    assert checkpoint == SplitBundle(sdf.id, 0.0)
    em.handle(BundleSplit(sdf.id, primary={"read": (("impulse",),)},
                          residual={"read": (("rest",),)}, residual_hold=5_000_000))
    [rest] = runs(em.handle(BundleSucceeded(sdf.id)))
    assert rest.drain and rest.inputs == {"read": (("rest",),)}
    clock.now += 60.0   # a draining bundle truncates its restriction: left alone
    assert splits(em.handle(Tick())) == [] and em.next_wakeup() is None
    assert em.handle(BundleSucceeded(rest.id)) == [JobFinished()]
