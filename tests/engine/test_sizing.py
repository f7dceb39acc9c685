"""The splitting and sizing policy: pure functions, no engine."""
from __future__ import annotations

import pytest

from beam_gpu_runner.engine.sizing import (
    SequenceDivider, even_chunks, plan_divisions, plan_splits)


@pytest.mark.parametrize("n, parts, sizes", [
    (10, 3, [4, 3, 3]),
    (3, 5, [1, 1, 1]),      # never more parts than items
    (0, 2, [0]),
    (96, 4, [24, 24, 24, 24]),
])
def test_even_chunks(n, parts, sizes):
    chunks = even_chunks(list(range(n)), parts)
    assert [len(c) for c in chunks] == sizes
    assert [x for c in chunks for x in c] == list(range(n))


@pytest.mark.parametrize("ready, free, expected", [
    # one big bundle, four idle places: four parts
    ([("a", 96)], 4, {"a": 4}),
    # as many bundles as places: nothing to cut
    ([("a", 96), ("b", 5)], 2, {}),
    # the larger bundle gets the extra parts
    ([("a", 100), ("b", 10)], 4, {"a": 3}),
    ([("a", 10), ("b", 10)], 4, {"a": 2, "b": 2}),
    # indivisible (0 elements known) and tiny bundles are left alone
    ([("a", 0), ("b", 1)], 4, {}),
    ([("a", 2)], 8, {"a": 2}),
    # no idle places
    ([("a", 50)], 0, {}),
])
def test_plan_divisions(ready, free, expected):
    assert plan_divisions(ready, free) == expected


@pytest.mark.parametrize("idle, candidates, expected", [
    (0, ["a"], []),
    (1, [], []),
    # one idle place: the oldest keeps half
    (1, ["a", "b"], [("a", 0.5)]),
    # three idle places, one straggler: it keeps a quarter, its residual is for three
    (3, ["a"], [("a", 0.25)]),
    # three places, two candidates: the older gets two takers
    (3, ["a", "b"], [("a", 1 / 3), ("b", 0.5)]),
])
def test_plan_splits(idle, candidates, expected):
    got = plan_splits(idle, candidates)
    assert [k for k, _ in got] == [k for k, _ in expected]
    assert [f for _, f in got] == pytest.approx([f for _, f in expected])


def test_sequence_divider_counts_and_cuts_in_order():
    divider = SequenceDivider()
    payloads = (("a", "b", "c"), ("d", "e"))
    assert divider.elements(payloads) == 5
    parts = divider.divide(payloads, 2)
    assert parts == [(("a", "b", "c"),), (("d", "e"),)]
    assert divider.elements((object(),)) == 0
