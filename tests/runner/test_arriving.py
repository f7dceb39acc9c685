"""GroupByKey input grouped as a producer's output arrives (execution/arriving.py)."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.coders import coders
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_fn_api_pb2, beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core, window
from apache_beam.transforms.window import GlobalWindows

from beam_gpu_runner.execution import arriving
from beam_gpu_runner.execution.arriving import ArrivingGroups, released_by_window
from beam_gpu_runner.execution.attempt import AttemptResult
from beam_gpu_runner.execution.partitioned import merge_results
from beam_gpu_runner.execution.results import has_data
from beam_gpu_runner.testing import GpuTestPipeline

KV = coders.TupleCoder([coders.StrUtf8Coder(), coders.VarIntCoder()])
WINDOWED_KV = coders.WindowedValueCoder(KV, coders.GlobalWindowCoder())
GROUPED = coders.WindowedValueCoder(
    coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.VarIntCoder())]),
    coders.GlobalWindowCoder())
GLOBAL = core.Windowing(GlobalWindows())


def _chunk(pairs: list[tuple[str, int]]) -> bytes:
    impl = WINDOWED_KV.get_impl()
    return b"".join(impl.encode_nested(GlobalWindows.windowed_value(p)) for p in pairs)


def _arriving(*chunks: bytes) -> ArrivingGroups:
    groups = ArrivingGroups(WINDOWED_KV, GROUPED, GLOBAL)
    for chunk in chunks:
        groups.append(chunk)
    return groups


def _decoded(buffer: beam_exec.GroupingBuffer) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for chunk in buffer:
        for wv in GROUPED.get_impl().decode_all(chunk):
            key, values = wv.value
            assert key not in out
            out[key] = sorted(values)
    return out


def test_groups_built_piece_by_piece_equal_beams_grouping_of_the_whole():
    pairs = [("k%d" % (i % 5), i) for i in range(100)]
    consumer = beam_exec.GroupingBuffer(WINDOWED_KV, GROUPED, GLOBAL)
    consumer.extend(_arriving(_chunk(pairs[:30]), b"", _chunk(pairs[30:])))
    whole = beam_exec.GroupingBuffer(WINDOWED_KV, GROUPED, GLOBAL)
    whole.append(_chunk(pairs))
    assert _decoded(consumer) == _decoded(whole) == {
        "k%d" % k: list(range(k, 100, 5)) for k in range(5)}


def test_it_is_not_read_as_chunks_and_knows_when_it_is_empty():
    empty = _arriving(b"")
    assert not has_data(empty)
    assert has_data(_arriving(_chunk([("a", 1)])))
    with pytest.raises(TypeError, match="extend"):
        list(_arriving(_chunk([("a", 1)])))


def test_a_consumers_grouping_is_unchanged_when_the_payload_is_read_again():
    # A retried consumer bundle gets the same payload again.
    payload = _arriving(_chunk([("a", 1), ("b", 2), ("a", 3)]))
    for _ in range(2):
        consumer = beam_exec.GroupingBuffer(WINDOWED_KV, GROUPED, GLOBAL)
        consumer.extend(payload)
        assert _decoded(consumer) == {"a": [1, 3], "b": [2]}


def test_parts_of_one_bundle_merge_their_groups():
    def result(pairs: list[tuple[str, int]]) -> AttemptResult:
        response = beam_fn_api_pb2.InstructionResponse(instruction_id="b")
        return AttemptResult(response, [], {b"group:g": _arriving(_chunk(pairs))}, {})

    merged = merge_results([result([("a", 1), ("b", 2)]), result([("a", 3)])])
    groups = merged.outputs[b"group:g"]
    assert isinstance(groups, ArrivingGroups) and groups.chunks == 2
    consumer = beam_exec.GroupingBuffer(WINDOWED_KV, GROUPED, GLOBAL)
    consumer.extend(groups)
    assert _decoded(consumer) == {"a": [1, 3], "b": [2]}


def _strategy(window_fn_urn: str, merging: bool) -> beam_runner_api_pb2.WindowingStrategy:
    return beam_runner_api_pb2.WindowingStrategy(
        window_fn=beam_runner_api_pb2.FunctionSpec(urn=window_fn_urn),
        merge_status=(beam_runner_api_pb2.MergeStatus.NEEDS_MERGE if merging
                      else beam_runner_api_pb2.MergeStatus.NON_MERGING))


def test_only_inputs_that_go_whole_to_their_consumer_are_grouped_on_arrival():
    assert not released_by_window(_strategy(common_urns.global_windows.urn, False))
    assert not released_by_window(_strategy(common_urns.session_windows.urn, True))
    assert released_by_window(_strategy(common_urns.fixed_windows.urn, False))


def _spread(i: int):
    return [("k%d" % (j % 100), j) for j in range(i * 50_000, (i + 1) * 50_000)]


def test_a_big_group_by_key_on_two_workers_is_grouped_as_it_arrives(monkeypatch):
    # 400 k elements (~8 MB): the harness sends ~1 MB messages, each grouped
    # on arrival; the result is exact.
    sizes: list[int] = []
    append = ArrivingGroups.append

    def recording(self: ArrivingGroups, data: bytes) -> None:
        sizes.append(len(data))
        append(self, data)

    monkeypatch.setattr(arriving.ArrivingGroups, "append", recording)
    with GpuTestPipeline(extra_args=["--num_workers=2"]) as p:
        counts = (p | beam.Create(range(8))
                  | beam.FlatMap(_spread)
                  | beam.GroupByKey()
                  | beam.MapTuple(lambda k, vs: (k, len(list(vs)), sum(vs))))
        assert_that(counts, equal_to([
            ("k%d" % k, 4000, sum(range(k, 400_000, 100))) for k in range(100)]))
    assert len(sizes) >= 6 and max(sizes) < 2 << 20, sizes


@pytest.mark.parametrize("windows", [window.Sessions(10), window.FixedWindows(10)],
                         ids=["sessions", "fixed"])
def test_windowed_group_by_key_in_batch_is_exact(windows):
    with GpuTestPipeline(extra_args=["--num_workers=2"]) as p:
        grouped = (p | beam.Create([("k%d" % (i % 3), i) for i in range(60)])
                   | beam.Map(lambda kv: window.TimestampedValue(kv, kv[1]))
                   | beam.WindowInto(windows)
                   | beam.GroupByKey()
                   | beam.MapTuple(lambda k, vs: (k, sorted(vs))))
        if isinstance(windows, window.Sessions):   # gaps of 3 s: one session per key
            expected = [("k%d" % k, list(range(k, 60, 3))) for k in range(3)]
        else:
            expected = [("k%d" % k, [i for i in range(w, w + 10) if i % 3 == k])
                        for k in range(3) for w in range(0, 60, 10)]
        assert_that(grouped, equal_to(expected))
