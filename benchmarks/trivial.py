"""Runner overhead: a trivial pipeline (Map, GroupByKey, CombinePerKey) over N elements."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter

from benchmarks.common import cold_start, options, steady_rate


NAMESPACE = "benchmarks.trivial"
NUM_KEYS = 1000


def _generate(shard: tuple[int, int]) -> Iterator[int]:
    lo, hi = shard
    return iter(range(lo, hi))


def _to_kv(x: int) -> tuple[int, int]:
    return x % NUM_KEYS, 1


def _count_group(kv: tuple[int, Any]) -> tuple[int, int]:
    key, ones = kv
    return key % 10, sum(ones)


class _Total(beam.DoFn):
    def __init__(self) -> None:
        self._total = Metrics.counter(NAMESPACE, "total")

    def process(self, kv: tuple[int, int]) -> Iterator[int]:
        self._total.inc(kv[1])
        yield kv[1]


def build(pipeline: beam.Pipeline, num_elements: int, shards: int = 8) -> None:
    step = -(-num_elements // shards)
    spans = [(lo, min(lo + step, num_elements)) for lo in range(0, num_elements, step)]
    _ = (pipeline
         | "Shards" >> beam.Create(spans)
         | "Generate" >> beam.FlatMap(_generate)
         | "ToKV" >> beam.Map(_to_kv)
         | "Group" >> beam.GroupByKey()
         | "CountGroup" >> beam.Map(_count_group)
         | "Combine" >> beam.CombinePerKey(sum)
         | "Total" >> beam.ParDo(_Total()))


@dataclass(frozen=True)
class TrivialRun:
    runner: str
    num_workers: int
    elements: int
    wall_s: float
    elements_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_trivial(runner: str, num_elements: int, num_workers: int = 0) -> TrivialRun:
    pipeline = beam.Pipeline(options=options(runner, num_workers))
    build(pipeline, num_elements)
    cold_start()
    started = time.time()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.time() - started
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    total = sum(int(c.committed if c.committed is not None else c.attempted or 0)
                for c in counters)
    if total != num_elements:
        raise RuntimeError("trivial %s: counted %d elements, expected %d"
                           % (runner, total, num_elements))
    return TrivialRun(runner=runner, num_workers=num_workers, elements=num_elements,
                      wall_s=wall, elements_per_s=num_elements / wall)


@dataclass(frozen=True)
class TrivialThroughput:
    """Wall-time throughput of the big run, and the steady per-element rate:
    the slope between a small and a big run, so fixed start-up (reported by
    the start-up benchmark) cancels out, as for MNIST."""

    runner: str
    num_workers: int
    elements: int
    wall_s: float
    elements_per_s: float          # elements / wall of the big run
    small_elements: int
    small_wall_s: float
    steady_elements_per_s: float   # (big - small) / (wall_big - wall_small)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_throughput(runner: str, num_elements: int, small_elements: int,
                   num_workers: int = 0) -> TrivialThroughput:
    small = run_trivial(runner, small_elements, num_workers) if small_elements else None
    big = run_trivial(runner, num_elements, num_workers)
    steady = steady_rate("trivial %s" % runner, num_elements, big.wall_s,
                         small_elements if small else 0, small.wall_s if small else 0.0)
    return TrivialThroughput(
        runner=runner, num_workers=num_workers, elements=num_elements, wall_s=big.wall_s,
        elements_per_s=big.elements_per_s, small_elements=small_elements,
        small_wall_s=small.wall_s if small else 0.0, steady_elements_per_s=steady)
