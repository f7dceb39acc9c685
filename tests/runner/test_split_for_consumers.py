"""How a stage's output is cut for concurrent consumer bundles (execution/results.py)."""
from __future__ import annotations

from apache_beam.coders import coders
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec

from beam_gpu_runner.execution import results

CODER = coders.WindowedValueCoder(coders.BytesCoder(), coders.GlobalWindowCoder())


def _buffer(elements: int, size: int) -> beam_exec.ListBuffer:
    from apache_beam.transforms.window import GlobalWindows
    impl = CODER.get_impl()
    buffer = beam_exec.ListBuffer(impl)
    for i in range(elements):
        buffer.append(impl.encode_nested(GlobalWindows.windowed_value(bytes([i % 256]) * size)))
    return buffer


def _decoded(payloads) -> list[bytes]:
    impl = CODER.get_impl()
    return sorted(v.value for p in payloads for chunk in p for v in impl.decode_all(chunk))


def test_a_small_output_goes_to_one_consumer_bundle():
    buffer = _buffer(10, 100)
    assert results.split_for_consumers(buffer, 4) == (buffer,)


def test_a_large_output_is_cut_into_parts_and_nothing_is_lost():
    size = results.SPLIT_MIN_BYTES // 8
    buffer = _buffer(16, size)   # ~2 MB in 16 chunks
    parts = results.split_for_consumers(buffer, 4)
    assert len(parts) == 4
    assert _decoded(parts) == _decoded([buffer])
