"""A batch GroupByKey's input grouped on the driver (bridge/grouped.py)."""
from __future__ import annotations

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
    windowed = coders.WindowedValueCoder(KV, coders.IntervalWindowCoder())
    out_coder = coders.WindowedValueCoder(
        coders.TupleCoder([coders.StrUtf8Coder(),
                           coders.IterableCoder(coders.VarIntCoder())]),
        coders.IntervalWindowCoder())
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
