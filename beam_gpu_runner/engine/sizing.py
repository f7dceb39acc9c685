"""How work is cut to keep every worker busy: pure decisions, no I/O.

Two levers, both decided by the element manager from what it knows (pool
capacities, bundles ready and in flight, a clock):

* **Dividing** ready work: when a pool has more idle places than ready
  bundles, the largest divisible bundles are cut by element into as many
  parts as fill the idle places (never more parts than elements). Cheap
  elements thus still travel in few, large bundles: a bundle is cut only
  into as many parts as there are idle workers to take them.
* **Splitting** running work (Dataflow's dynamic work rebalancing, Prism's
  split requests): when a pool has idle places, nothing ready for it, and a
  bundle of a splittable stage has run for ``SplitPolicy.min_runtime_s``, the
  bundle is asked to keep ``1/(k+1)`` of its remainder, k being the idle
  places its residual may take; the residual comes back as a ready bundle and
  is divided like any other.

Payloads are opaque to the engine: a ``Divider`` counts and cuts them (the
runner's cuts encoded element chunks; tests cut tuples of strings).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Protocol, Sequence, TypeVar

from beam_gpu_runner.engine.events import Payload

K = TypeVar("K", bound=Hashable)


class Divider(Protocol):
    def elements(self, payloads: tuple[Payload, ...]) -> int:
        """How many elements ``payloads`` hold (0 when unknown: never divided)."""

    def divide(self, payloads: tuple[Payload, ...], parts: int
               ) -> list[tuple[Payload, ...]]:
        """``payloads`` cut into ``parts`` non-empty pieces, in element order."""


class SequenceDivider:
    """Payloads that are sequences of items (tuples, lists): for tests and
    runner-side data the engine may cut itself."""

    def elements(self, payloads: tuple[Payload, ...]) -> int:
        try:
            return sum(len(p) for p in payloads)
        except TypeError:
            return 0

    def divide(self, payloads: tuple[Payload, ...], parts: int
               ) -> list[tuple[Payload, ...]]:
        items = [item for p in payloads for item in p]
        return [(tuple(chunk),) for chunk in even_chunks(items, parts)]


T = TypeVar("T")


def even_chunks(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``items`` in ``parts`` contiguous runs whose sizes differ by at most one."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


@dataclass(frozen=True)
class SplitPolicy:
    """When running bundles are split for idle workers."""

    #: A bundle younger than this is left alone: it may be about to finish, and
    #: a split costs a round trip to its worker.
    min_runtime_s: float = 0.05
    #: After a refused split (nothing left to split, or the SDK could not),
    #: the bundle is asked again no sooner than this, doubling each time...
    retry_after_s: float = 0.2
    #: ... and at most this many times.
    max_refusals: int = 3
    #: A bundle of a stage that checkpoints (an unbounded splittable DoFn) is
    #: checkpointed after running this long (Beam's DirectRunner: 1 s).
    checkpoint_after_s: float = 1.0


def plan_divisions(ready: Sequence[tuple[K, int]], free: int) -> dict[K, int]:
    """Parts for ready bundles so that ``free`` idle places get work.

    ``ready``: (bundle, elements) of every ready bundle the pool could start,
    in dispatch order; elements 0 means indivisible. Returns bundle -> parts
    (>= 2) for the bundles to cut; the largest are cut first, none into more
    parts than elements.
    """
    spare = free - len(ready)
    if spare <= 0:
        return {}
    parts = {key: 1 for key, _ in ready}
    sizes = dict(ready)
    while spare > 0:
        # The bundle whose parts would stay largest gets one more part.
        best = max((k for k in parts if parts[k] < sizes[k]),
                   key=lambda k: sizes[k] / (parts[k] + 1), default=None)
        if best is None:
            break
        parts[best] += 1
        spare -= 1
    return {k: n for k, n in parts.items() if n > 1}


def plan_splits(idle: int, candidates: Sequence[K]) -> list[tuple[K, float]]:
    """Which running bundles to split for ``idle`` places, oldest first, and
    the fraction of its remainder each keeps (Beam's ``fraction_of_remainder``).

    With more idle places than candidates, each candidate's residual is meant
    for several of them (it is divided when it comes back).
    """
    if idle <= 0 or not candidates:
        return []
    chosen = list(candidates[:idle])
    share, extra = divmod(idle, len(chosen))
    out = []
    for i, key in enumerate(chosen):
        takers = share + (1 if i < extra else 0)
        out.append((key, 1.0 / (takers + 1)))
    return out


__all__ = ["Divider", "SequenceDivider", "SplitPolicy", "even_chunks", "plan_divisions",
           "plan_splits"]
