"""A batch GroupByKey's input grouped on the driver (bridge/grouped.py)."""
from __future__ import annotations

import os
import tracemalloc

import apache_beam as beam
import pytest
from apache_beam.coders import coders
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core, window
from apache_beam.transforms.window import GlobalWindows, IntervalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.bridge import grouped
from beam_gpu_runner.bridge.beam import beam_execution
from beam_gpu_runner.bridge.grouped import Groups, by_window, released_by_window
from beam_gpu_runner.testing import GpuTestPipeline

KV = coders.TupleCoder([coders.StrUtf8Coder(), coders.VarIntCoder()])
WINDOWED_KV = coders.WindowedValueCoder(KV, coders.GlobalWindowCoder())
GROUPED = coders.WindowedValueCoder(
    coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.VarIntCoder())]),
    coders.GlobalWindowCoder())
GLOBAL = core.Windowing(GlobalWindows())
WINDOWED_IN_INTERVALS = coders.WindowedValueCoder(KV, coders.IntervalWindowCoder())
GROUPED_IN_INTERVALS = coders.WindowedValueCoder(
    coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.VarIntCoder())]),
    coders.IntervalWindowCoder())


def chunk(pairs: list[tuple[str, int]]) -> bytes:
    impl = WINDOWED_KV.get_impl()
    return b"".join(impl.encode_nested(GlobalWindows.windowed_value(p)) for p in pairs)


def groups(*chunks: bytes) -> Groups:
    out = Groups(WINDOWED_KV, GROUPED, GLOBAL)
    for c in chunks:
        out.append(c)
    return out


def decoded(encoded: list[bytes]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for c in encoded:
        for wv in GROUPED.get_impl().decode_all(c):
            key, values = wv.value
            assert key not in out
            out[key] = list(values)
    return out


def test_groups_built_piece_by_piece_equal_beams_grouping_of_the_whole():
    pairs = [("k%d" % (i % 5), i) for i in range(100)]
    pieces = groups(chunk(pairs[:30]), b"", chunk(pairs[30:]))
    whole = beam_execution.GroupingBuffer(WINDOWED_KV, GROUPED, GLOBAL)
    whole.append(chunk(pairs))
    assert decoded(pieces.encoded()) == decoded(list(whole)) == {
        "k%d" % k: list(range(k, 100, 5)) for k in range(5)}
    assert pieces.messages == 2 and pieces.keys == 5


def test_merged_keeps_each_keys_values_in_producer_order():
    merged = Groups.merged([groups(chunk([("a", 1), ("b", 2)])),
                            groups(chunk([("a", 3)]))])
    assert decoded(merged.encoded()) == {"a": [1, 3], "b": [2]}


def test_encoding_is_kept_for_a_retry():
    payload = groups(chunk([("a", 1), ("b", 2), ("a", 3)]))
    first = payload.encoded()
    assert payload.encoded() is first and payload.keys == 2 and payload.has_data()
    assert payload.divide(2) == [payload]   # encoded already: sent whole


def test_divided_by_key_covers_every_group_once():
    payload = groups(chunk([("k%d" % (i % 10), i) for i in range(50)]))
    parts = payload.divide(3)
    assert [p.keys for p in parts] == [4, 3, 3]
    seen = {}
    for part in parts:
        for key, values in decoded(part.encoded()).items():
            assert key not in seen
            seen[key] = values
    assert seen == {"k%d" % k: list(range(k, 50, 10)) for k in range(10)}


def test_empty_groups_have_no_data():
    assert not groups(b"").has_data()


def strategy(urn: str, merging: bool) -> beam_runner_api_pb2.WindowingStrategy:
    return beam_runner_api_pb2.WindowingStrategy(
        window_fn=beam_runner_api_pb2.FunctionSpec(urn=urn),
        merge_status=(beam_runner_api_pb2.MergeStatus.NEEDS_MERGE if merging
                      else beam_runner_api_pb2.MergeStatus.NON_MERGING))


def test_only_non_merging_non_global_windows_are_released_by_window():
    assert not released_by_window(strategy(common_urns.global_windows.urn, False))
    assert not released_by_window(strategy(common_urns.session_windows.urn, True))
    assert released_by_window(strategy(common_urns.fixed_windows.urn, False))


def test_by_window_groups_each_window_apart():
    windowed, out_coder = WINDOWED_IN_INTERVALS, GROUPED_IN_INTERVALS
    fixed = core.Windowing(window.FixedWindows(10))
    template = Groups(windowed, out_coder, fixed)
    w1, w2 = IntervalWindow(0, 10), IntervalWindow(10, 20)
    impl = windowed.get_impl()
    data = b"".join(impl.encode_nested(WindowedValue(kv, ts, (w,)))
                    for kv, ts, w in [(("a", 1), 1, w1), (("a", 2), 11, w2),
                                      (("b", 3), 3, w1)])
    by_end = by_window([data], impl, template)
    assert sorted(by_end) == [w1.max_timestamp().micros, w2.max_timestamp().micros]
    assert by_end[w1.max_timestamp().micros].keys == 2
    assert by_end[w2.max_timestamp().micros].keys == 1


def spread(i: int):
    return [("k%d" % (j % 100), j) for j in range(i * 50_000, (i + 1) * 50_000)]


@pytest.mark.slow
def test_a_big_group_by_key_on_two_workers_is_grouped_as_it_arrives(monkeypatch):
    # 400 k elements (~8 MB): the harness sends ~1 MB messages, each grouped
    # on arrival; the result is exact.
    sizes: list[int] = []
    append = Groups.append

    def recording(self: Groups, data: bytes) -> None:
        sizes.append(len(data))
        append(self, data)

    monkeypatch.setattr(grouped.Groups, "append", recording)
    with GpuTestPipeline(extra_args=["--num_workers=2"]) as p:
        counts = (p | beam.Create(range(8))
                  | beam.FlatMap(spread)
                  | beam.GroupByKey()
                  | beam.MapTuple(lambda k, vs: (k, len(list(vs)), sum(vs))))
        assert_that(counts, equal_to([
            ("k%d" % k, 4000, sum(range(k, 400_000, 100))) for k in range(100)]))
    assert len(sizes) >= 6 and max(sizes) < 2 << 20, sizes


@pytest.mark.slow
@pytest.mark.parametrize("windows", [window.Sessions(10), window.FixedWindows(10)],
                         ids=["sessions", "fixed"])
def test_windowed_group_by_key_in_batch_is_exact(windows):
    with GpuTestPipeline(extra_args=["--num_workers=2"]) as p:
        result = (p | beam.Create([("k%d" % (i % 3), i) for i in range(60)])
                  | beam.Map(lambda kv: window.TimestampedValue(kv, kv[1]))
                  | beam.WindowInto(windows)
                  | beam.GroupByKey()
                  | beam.MapTuple(lambda k, vs: (k, sorted(vs))))
        if isinstance(windows, window.Sessions):   # gaps of 3 s: one session per key
            expected = [("k%d" % k, list(range(k, 60, 3))) for k in range(3)]
        else:
            expected = [("k%d" % k, [i for i in range(w, w + 10) if i % 3 == k])
                        for k in range(3) for w in range(0, 60, 10)]
        assert_that(result, equal_to(expected))


# ---- within a memory budget (--shuffle_memory_budget) ----------------------------


def budgeted(memory: grouped.GroupingMemory, pairs, per_message: int = 500) -> Groups:
    out = Groups(WINDOWED_KV, GROUPED, GLOBAL, memory)
    for start in range(0, len(pairs), per_message):
        out.append(chunk(pairs[start:start + per_message]))
    return out


def reference(*producers) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for pairs in producers:
        for key, value in pairs:
            out.setdefault(key, []).append(value)
    return out


def pairs_of(seed: int, count: int, keys: int) -> list[tuple[str, int]]:
    return [("k%d" % ((i * 7919 + seed) % keys), seed * 10 ** 6 + i) for i in range(count)]


def test_groups_beyond_the_budget_spill_and_read_back_exactly(tmp_path):
    memory = grouped.GroupingMemory(256 << 10, str(tmp_path))
    pairs = pairs_of(1, 60_000, 3_000)
    payload = budgeted(memory, pairs)
    assert payload.spilled and memory.budget.used <= memory.budget.limit
    folder = memory.folder.created
    assert folder is not None and os.listdir(folder)
    first = decoded(list(payload.encoded()))
    assert first == reference(pairs)
    # a retry of the consumer reads the same groups again, from disk
    assert decoded(list(payload.encoded())) == first
    memory.close()
    assert not os.path.exists(folder)


def test_producers_that_spilled_merge_in_producer_order(tmp_path):
    memory = grouped.GroupingMemory(128 << 10, str(tmp_path))
    a, b, c = pairs_of(1, 30_000, 500), pairs_of(2, 200, 500), pairs_of(3, 30_000, 500)
    parts = [budgeted(memory, a), budgeted(memory, b), budgeted(memory, c)]
    assert parts[0].spilled and not parts[1].spilled
    merged = Groups.merged(parts)
    assert merged.spilled and merged.messages == sum(p.messages for p in parts)
    assert decoded(list(merged.encoded())) == reference(a, b, c)
    memory.close()


def test_spilled_groups_are_read_by_one_bundle_with_everything_on_disk_first(tmp_path):
    memory = grouped.GroupingMemory(128 << 10, str(tmp_path))
    pairs = pairs_of(5, 40_000, 2_000)
    payload = budgeted(memory, pairs)
    assert payload.divide(3) == [payload]
    assert decoded(list(payload.encoded())) == reference(pairs)
    # reading spilled what the producers had left in memory: the budget is free
    assert memory.budget.used == 0
    memory.close()


def test_spilled_windowed_groups_equal_beams_grouping(tmp_path):
    windowed, out_coder = WINDOWED_IN_INTERVALS, GROUPED_IN_INTERVALS
    sessions = core.Windowing(window.Sessions(5))
    impl = windowed.get_impl()
    elements = [WindowedValue(("k%d" % (i % 50), i), i // 50,
                              (IntervalWindow(i // 50, i // 50 + 5),))
                for i in range(20_000)]
    data = [b"".join(impl.encode_nested(e) for e in elements[s:s + 400])
            for s in range(0, len(elements), 400)]
    memory = grouped.GroupingMemory(64 << 10, str(tmp_path))
    payload = Groups(windowed, out_coder, sessions, memory)
    beams = beam_execution.GroupingBuffer(windowed, out_coder, sessions)
    for message in data:
        payload.append(message)
        beams.append(message)
    assert payload.spilled

    def grouped_values(encoded):
        out = {}
        for c in encoded:
            for wv in out_coder.get_impl().decode_all(c):
                key, values = wv.value
                out[(key, wv.windows)] = sorted(values)
        return out

    assert grouped_values(payload.encoded()) == grouped_values(list(beams))
    memory.close()


def test_memory_held_while_grouping_stays_near_the_budget(tmp_path):
    # ~40 MB of grouped values through a 4 MiB budget: tracemalloc's peak
    # while grouping and reading back stays within a few budgets, where
    # grouping it in memory holds many times the data.
    budget = 4 << 20
    memory = grouped.GroupingMemory(budget, str(tmp_path))
    value = "v" * 200
    message = chunk([("k%d" % i, 0) for i in range(1)])   # warm the coders
    del message
    impl = coders.WindowedValueCoder(
        coders.TupleCoder([coders.StrUtf8Coder(), coders.StrUtf8Coder()]),
        coders.GlobalWindowCoder())
    out = coders.WindowedValueCoder(
        coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.StrUtf8Coder())]),
        coders.GlobalWindowCoder())
    payload = Groups(impl, out, GLOBAL, memory)
    encode = impl.get_impl().encode_nested
    tracemalloc.start()
    try:
        for m in range(200):   # 200 messages of 1000 values: ~40 MB of values
            payload.append(b"".join(
                encode(GlobalWindows.windowed_value(("k%d" % ((m * 1000 + i) % 20_000), value)))
                for i in range(1000)))
        read = sum(len(piece) for piece in payload.encoded())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read > 40_000_000
    assert memory.budget.peak <= budget
    assert peak < 4 * budget + (4 << 20), "peak %d bytes for a %d-byte budget" % (peak, budget)
    memory.close()


@pytest.mark.slow
def test_a_group_by_key_beyond_the_budget_is_exact_on_workers(tmp_path):
    with GpuTestPipeline(extra_args=["--num_workers=2", "--shuffle_memory_budget=1M",
                                     "--spill_dir=%s" % tmp_path]) as p:
        counts = (p | beam.Create(range(8))
                  | beam.FlatMap(spread)
                  | beam.GroupByKey()
                  | beam.MapTuple(lambda k, vs: (k, len(list(vs)), sum(vs))))
        assert_that(counts, equal_to([
            ("k%d" % k, 4000, sum(range(k, 400_000, 100))) for k in range(100)]))
    assert list(tmp_path.iterdir()) == []   # the job removed its spill files
