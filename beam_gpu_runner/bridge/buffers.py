"""Buffer ids as values, and the encoded element chunks that flow between stages.

A data channel is named by a ``BufferId``: a kind and a name, written on the
wire as Beam's ``b"kind:name"`` and in the engine's graph as the same text.
Code asks ``buffer.kind is BufferKind.GROUP``; nobody tests string prefixes.

``Chunks`` is what a stage's output is, as the engine carries it: the
encoded elements exactly as a worker sent them (a tuple of ``bytes``, each
holding whole elements), with the coder that reads them and the element count
when known. Chunks are never decoded or copied on the way from one worker to
the next; only cutting them finer than a chunk (``split_at``, ``divide`` of a
small payload) decodes element boundaries.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from apache_beam.coders.coder_impl import create_InputStream

from beam_gpu_runner.engine.sizing import even_chunks


class BufferKind(enum.Enum):
    """What a data channel carries (Beam's kinds first, then the runner's)."""

    IMPULSE = "impulse"            # the one impulse element of a root stage
    PCOLLECTION = "materialize"    # a PCollection between fused stages
    GROUP = "group"                # a GroupByKey's input, by its transform id
    TIMERS = "timers"              # timers a stage set, by timer family
    GROUPED = "grouped"            # a streaming GroupByKey's panes (runner-side)
    TIMING = "timing"              # PairWithTiming's input (runner-side)
    TIMED = "timed"                # PairWithTiming's output
    TEST_STREAM = "test_stream"    # a TestStream output, fed from its script


@dataclass(frozen=True)
class BufferId:
    kind: BufferKind
    name: str = ""

    @classmethod
    def parse(cls, raw: Union[bytes, str]) -> "BufferId":
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if text == BufferKind.IMPULSE.value:
            return cls(BufferKind.IMPULSE)
        kind, sep, name = text.partition(":")
        try:
            return cls(BufferKind(kind), name)
        except ValueError:
            raise ValueError("BufferId.parse: unknown buffer kind %r in %r (known: %s)"
                             % (kind, text, [k.value for k in BufferKind])) from None

    @classmethod
    def group(cls, gbk_transform: str) -> "BufferId":
        return cls(BufferKind.GROUP, gbk_transform)

    def grouped(self) -> "BufferId":
        """The panes a streaming grouping of this GROUP buffer writes."""
        assert self.kind is BufferKind.GROUP, self
        return BufferId(BufferKind.GROUPED, self.name)

    def encode(self) -> bytes:
        return str(self).encode("utf-8")

    def __str__(self) -> str:
        if self.kind is BufferKind.IMPULSE:
            return self.kind.value
        return "%s:%s" % (self.kind.value, self.name)


@dataclass(frozen=True)
class Chunks:
    """Encoded elements of one data channel; see the module docstring.

    ``elements`` is exact when known (None: unknown); ``coder_impl`` decodes
    one element (nested), for the rare cuts inside a chunk.
    """

    chunks: tuple[bytes, ...]
    coder_impl: Any = field(default=None, compare=False, repr=False)
    elements: Optional[int] = None

    @classmethod
    def of(cls, chunks: Iterable[bytes], coder_impl: Any,
           elements: Optional[int] = None) -> "Chunks":
        return cls(tuple(c for c in chunks if c), coder_impl, elements)

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks)

    def estimated_elements(self) -> int:
        """Exact when known; else at least the chunk count (each holds whole
        elements), which is what a cut at chunk boundaries can use."""
        if self.elements is not None:
            return self.elements
        return len(self.chunks)

    def element_bytes(self) -> list[bytes]:
        """Each element's encoding (decodes boundaries: for small or split inputs)."""
        impl = self.coder_impl
        if impl is None:
            raise ValueError("Chunks.element_bytes: no coder to find element "
                             "boundaries in %d chunk(s)" % len(self.chunks))
        out = []
        for chunk in self.chunks:
            stream = create_InputStream(chunk)
            start = 0
            size = len(chunk)
            while stream.size() > 0:
                impl.decode_from_stream(stream, True)
                end = size - stream.size()
                out.append(chunk[start:end])
                start = end
        return out

    def with_elements(self, elements: Sequence[bytes]) -> "Chunks":
        return Chunks((b"".join(elements),) if elements else (), self.coder_impl,
                      len(elements))

    def divide(self, parts: int) -> list["Chunks"]:
        """Up to ``parts`` non-empty pieces in order: at chunk boundaries when
        there are enough chunks (no copy, balanced by bytes), else by element."""
        if parts <= 1 or not self.chunks:
            return [self]
        if len(self.chunks) >= parts:
            return [Chunks(tuple(run), self.coder_impl, None)
                    for run in _runs_by_bytes(self.chunks, parts)]
        elements = self.element_bytes()
        return [self.with_elements(run) for run in even_chunks(elements, parts) if run]


def _runs_by_bytes(chunks: Sequence[bytes], parts: int) -> list[Sequence[bytes]]:
    """``chunks`` in ``parts`` contiguous, non-empty runs of about equal bytes."""
    total = sum(len(c) for c in chunks)
    runs: list[Sequence[bytes]] = []
    start, acc = 0, 0
    for i, chunk in enumerate(chunks):
        acc += len(chunk)
        left_runs = parts - len(runs) - 1
        left_chunks = len(chunks) - i - 1
        target = total * (len(runs) + 1) / parts
        if left_runs > 0 and (acc >= target or left_chunks == left_runs):
            runs.append(chunks[start:i + 1])
            start = i + 1
    runs.append(chunks[start:])
    return [r for r in runs if r]


@dataclass(frozen=True)
class StreamedChunks:
    """Encoded elements made as they are read (grouped data read back from
    spill files), never held whole: re-iterable, one ~1 MB piece at a time.
    Its size is unknown until read, and it is not split (a split would need
    every element's boundaries in memory)."""

    source: Iterable[bytes] = field(repr=False)
    coder_impl: Any = field(default=None, compare=False, repr=False)
    elements: Optional[int] = None

    nbytes = -1   # unknown

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.source)

    def estimated_elements(self) -> int:
        return self.elements or 1


#: What an attempt sends to a data input.
Input = Union[Chunks, StreamedChunks]


def concat(payloads: Iterable[Chunks]) -> Chunks:
    """One payload of several (same channel), without copying bytes."""
    payloads = list(payloads)
    if len(payloads) == 1:
        return payloads[0]
    counts = [p.elements for p in payloads]
    known = None if any(c is None for c in counts) else sum(c or 0 for c in counts)
    impl = next((p.coder_impl for p in payloads if p.coder_impl is not None), None)
    return Chunks(tuple(c for p in payloads for c in p.chunks), impl, known)


__all__ = ["BufferId", "BufferKind", "Chunks", "Input", "StreamedChunks", "concat"]
