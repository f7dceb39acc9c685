"""A grouped input cut into parts for parallel attempts (execution/partitioned.py)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core
from apache_beam.transforms.window import GlobalWindows

from beam_gpu_runner.engine.graph import InputKind, InputSpec, StageSpec, TimerFamily
from beam_gpu_runner.execution.attempt import AttemptResult
from beam_gpu_runner.execution.partitioned import merge_results, split_grouped
from beam_gpu_runner.testing import GpuTestPipeline

KV = coders.TupleCoder([coders.StrUtf8Coder(), coders.VarIntCoder()])
WINDOWED_KV = coders.WindowedValueCoder(KV, coders.GlobalWindowCoder())
GROUPED = coders.WindowedValueCoder(
    coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.VarIntCoder())]),
    coders.GlobalWindowCoder())


def _grouping(pairs: list[tuple[str, int]]) -> beam_exec.GroupingBuffer:
    buffer = beam_exec.GroupingBuffer(WINDOWED_KV, GROUPED, core.Windowing(GlobalWindows()))
    impl = WINDOWED_KV.get_impl()
    buffer.append(b"".join(impl.encode_nested(GlobalWindows.windowed_value(p)) for p in pairs))
    return buffer


def _spec(**kw) -> StageSpec:
    return StageSpec("s", (InputSpec("t", "group:t", InputKind.BARRIER),), **kw)


def _groups(pieces) -> dict[str, list[int]]:
    impl = GROUPED.get_impl()
    out: dict[str, list[int]] = {}
    for piece in pieces:
        for chunk in piece["t"]:
            for wv in impl.decode_all(chunk):
                key, values = wv.value
                assert key not in out, "a key in two parts"
                out[key] = sorted(values)
    return out


def test_groups_are_cut_into_parts_and_each_key_stays_whole():
    pairs = [("k%d" % (i % 7), i) for i in range(70)]
    pieces = split_grouped(_spec(), {"t": _grouping(pairs)}, 3)
    assert len(pieces) == 3
    assert _groups(pieces) == {"k%d" % k: list(range(k, 70, 7)) for k in range(7)}


def test_stateful_timer_and_single_part_stages_are_not_cut():
    timers = (TimerFamily("f", processing_time=False),)
    for spec, parts in ((_spec(stateful=True), 3), (_spec(timer_families=timers), 3),
                        (_spec(), 1)):
        buffer = _grouping([("a", 1), ("b", 2)])
        assert split_grouped(spec, {"t": buffer}, parts) == [{"t": buffer}]


def test_merged_result_has_every_parts_outputs_and_metrics():
    def result(data: bytes, counter: int) -> AttemptResult:
        out = beam_exec.ListBuffer(None)
        out.append(data)
        response = beam_fn_api_pb2.InstructionResponse(instruction_id="b")
        response.process_bundle.monitoring_infos.add(urn="u%d" % counter)
        return AttemptResult(response, [], {b"o": out}, {}, view=None)

    merged = merge_results([result(b"x", 1), result(b"y", 2)])
    assert list(merged.outputs[b"o"]) == [b"x", b"y"]
    assert [m.urn for m in merged.response.process_bundle.monitoring_infos] == ["u1", "u2"]


def test_group_by_key_on_two_workers_is_exact():
    with GpuTestPipeline(extra_args=["--num_workers=2"]) as p:
        grouped = (p | beam.Create([("k%d" % (i % 50), i) for i in range(1000)])
                   | beam.GroupByKey()
                   | beam.MapTuple(lambda k, vs: (k, sum(vs), len(list(vs)))))
        assert_that(grouped, equal_to(
            [("k%d" % k, sum(range(k, 1000, 50)), 20) for k in range(50)]))
