"""Buffer ids as values, and cutting encoded element chunks."""
from __future__ import annotations

import pytest
from apache_beam.coders import coders

from beam_gpu_runner.bridge.buffers import BufferId, BufferKind, Chunks, concat

INTS = coders.VarIntCoder().get_impl()


@pytest.mark.parametrize("text, kind, name", [
    ("impulse", BufferKind.IMPULSE, ""),
    ("materialize:ref_PCollection_3", BufferKind.PCOLLECTION, "ref_PCollection_3"),
    ("group:ref_GroupByKey:with:colons", BufferKind.GROUP, "ref_GroupByKey:with:colons"),
    ("timers:family", BufferKind.TIMERS, "family"),
    ("grouped:g", BufferKind.GROUPED, "g"),
    ("timing:t", BufferKind.TIMING, "t"),
    ("timed:t", BufferKind.TIMED, "t"),
    ("test_stream:pc", BufferKind.TEST_STREAM, "pc"),
])
def test_buffer_ids_round_trip(text, kind, name):
    buffer = BufferId.parse(text.encode())
    assert (buffer.kind, buffer.name) == (kind, name)
    assert str(buffer) == text and buffer.encode() == text.encode()
    assert BufferId.parse(text) == buffer


def test_an_unknown_kind_names_itself():
    with pytest.raises(ValueError, match="unknown buffer kind 'bogus'"):
        BufferId.parse(b"bogus:x")


def test_a_grouping_writes_its_grouped_buffer():
    assert BufferId.group("g").grouped() == BufferId(BufferKind.GROUPED, "g")


def ints(values, per_chunk):
    chunks = [b"".join(INTS.encode_nested(v) for v in values[i:i + per_chunk])
              for i in range(0, len(values), per_chunk)]
    return Chunks.of(chunks, INTS, len(values))


def decoded(chunks: Chunks) -> list[int]:
    return [v for chunk in chunks for v in INTS.decode_all(chunk)]


def test_few_chunks_are_cut_by_element_and_counted():
    data = ints(list(range(96)), per_chunk=96)
    parts = data.divide(4)
    assert [p.elements for p in parts] == [24, 24, 24, 24]
    assert [v for p in parts for v in decoded(p)] == list(range(96))


def test_many_chunks_are_cut_at_chunk_boundaries_without_copying():
    data = ints(list(range(100)), per_chunk=10)
    parts = data.divide(3)
    assert len(parts) == 3
    assert all(c in data.chunks for p in parts for c in p.chunks)   # the same bytes
    assert [v for p in parts for v in decoded(p)] == list(range(100))


def test_never_more_parts_than_elements():
    assert len(ints([1, 2], per_chunk=2).divide(5)) == 2
    assert ints([7], per_chunk=1).divide(3)[0].elements == 1


def test_element_bytes_and_concat():
    a, b = ints([1, 2, 3], per_chunk=3), ints([4], per_chunk=1)
    both = concat([a, b])
    assert both.elements == 4 and both.nbytes == a.nbytes + b.nbytes
    assert [INTS.decode_nested(e) for e in both.element_bytes()] == [1, 2, 3, 4]
    assert concat([a, Chunks.of([b"\x05"], INTS)]).elements is None
    with pytest.raises(ValueError, match="no coder"):
        Chunks.of([b"\x01"], None).element_bytes()
