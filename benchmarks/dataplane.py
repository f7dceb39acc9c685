"""Issue 15: the data path between stages, and the driver's memory.

* ``fast_edge``: 1 MiB numpy elements through source -> hinted stage -> sum,
  with the hinted stage kept apart from its neighbours. Steady MB/s is the
  slope between a small and a big run (``common.steady_rate``); the ceiling
  is ``memcpy_bandwidth`` of the same bytes, measured in the same run.
  ``chaining`` passes ``--accelerator_chaining=<value>`` (the option the
  runner is getting; a runner that does not know it ignores it, as Beam does
  with unknown flags).
* ``gbk_memory``: a GroupByKey of ``values`` x ``value_bytes`` over ``keys``
  keys, run in a child process (``python -m benchmarks.dataplane gbk ...``)
  so that its peak memory is its own: the driver's peak resident set from
  ``VmHWM`` in the child's ``/proc/self/status`` (the driver process alone,
  exact; see ``peak_rss_bytes``), and the peak of the child plus all its
  descendants (the runner's workers) sampled with psutil every 50 ms by the
  parent.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import Metrics, MetricsFilter

from benchmarks.common import RUNNERS, cold_start, fake_gpu_options, steady_rate

MIB = 1 << 20
HINT = "type:nvidia-h100;count:1"
NAMESPACE = "benchmarks.dataplane"
CHAINING_OPTION = "--accelerator_chaining"


def _run_and_count(pipeline: beam.Pipeline) -> tuple[float, dict[str, int]]:
    """Runs ``pipeline``, its workers started for it: its wall time and this
    module's counters."""
    cold_start()
    started = time.time()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.time() - started
    counters = {c.key.metric.name: int(c.committed if c.committed is not None
                                       else c.attempted or 0)
                for c in result.metrics().query(
                    MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    return wall, counters


# -- the fast edge -------------------------------------------------------------

def _array(i: int, nbytes: int) -> np.ndarray:
    return np.full(nbytes // 8, float(i), dtype=np.float64)


class _MakeArray(beam.DoFn):
    def __init__(self, nbytes: int) -> None:
        self._nbytes = nbytes

    def process(self, i: int) -> Iterator[np.ndarray]:
        yield _array(i, self._nbytes)


class _OnDevice(beam.DoFn):
    """The hinted stage: passes each array on (a stand-in for a device step
    that keeps its input's size), so 1 MiB crosses both of its edges."""

    def process(self, array: np.ndarray) -> Iterator[np.ndarray]:
        yield array


class _Sum(beam.DoFn):
    def __init__(self) -> None:
        self._elements = Metrics.counter(NAMESPACE, "elements")
        self._sum = Metrics.counter(NAMESPACE, "sum")

    def process(self, array: np.ndarray) -> None:
        self._elements.inc()
        self._sum.inc(int(array[0]))   # each array is full of its index


@dataclass(frozen=True)
class EdgeRun:
    runner: str
    elements: int
    element_bytes: int
    wall_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chaining_args(chaining: Optional[str]) -> list[str]:
    return ["%s=%s" % (CHAINING_OPTION, chaining)] if chaining else []


def run_edge(runner: str, elements: int, element_bytes: int = MIB,
             chaining: Optional[str] = None, num_workers: int = 0,
             hinted: bool = True) -> EdgeRun:
    """One job; ``hinted=False`` drops the hint (FnApiRunner then fuses the
    three steps into one stage)."""
    extra = chaining_args(chaining) if runner == "gpu" else []
    pipeline = beam.Pipeline(options=fake_gpu_options(runner, 1, num_workers, extra))
    on_device: beam.PTransform = beam.ParDo(_OnDevice())
    if hinted:
        on_device = on_device.with_resource_hints(accelerator=HINT)
    _ = (pipeline
         | "Indexes" >> beam.Create(list(range(elements)))
         | "Source" >> beam.ParDo(_MakeArray(element_bytes))
         | "OnDevice" >> on_device
         | "Sum" >> beam.ParDo(_Sum()))
    wall, counters = _run_and_count(pipeline)
    want = {"elements": elements, "sum": elements * (elements - 1) // 2}
    if counters != want:
        raise RuntimeError("fast edge %s: the sum stage counted %s, expected %s"
                           % (runner, counters, want))
    return EdgeRun(runner=runner, elements=elements, element_bytes=element_bytes,
                   wall_s=wall)


@dataclass(frozen=True)
class EdgeThroughput:
    runner: str
    hinted: bool
    chaining: Optional[str]
    element_bytes: int
    elements: int
    wall_s: float
    small_elements: int
    small_wall_s: float
    steady_mb_per_s: float     # 1e6 bytes/s, slope between the small and the big run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def edge_throughput(runner: str, elements: int, small_elements: int,
                    element_bytes: int = MIB, chaining: Optional[str] = None,
                    num_workers: int = 0, hinted: bool = True) -> EdgeThroughput:
    small = run_edge(runner, small_elements, element_bytes, chaining, num_workers, hinted) \
        if small_elements else None
    big = run_edge(runner, elements, element_bytes, chaining, num_workers, hinted)
    rate = steady_rate("fast edge %s" % runner, elements, big.wall_s,
                       small_elements if small else 0, small.wall_s if small else 0.0)
    return EdgeThroughput(runner=runner, hinted=hinted,
                          chaining=chaining if runner == "gpu" else None,
                          element_bytes=element_bytes, elements=elements, wall_s=big.wall_s,
                          small_elements=small_elements,
                          small_wall_s=small.wall_s if small else 0.0,
                          steady_mb_per_s=rate * element_bytes / 1e6)


@dataclass(frozen=True)
class Memcpy:
    element_bytes: int
    copies: int
    mb_per_s: float           # 1e6 bytes/s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def memcpy_bandwidth(element_bytes: int = MIB, copies: int = 500, distinct: int = 64,
                     repeats: int = 3) -> Memcpy:
    """``np.copyto`` of ``element_bytes`` arrays into a preallocated one,
    cycling over ``distinct`` sources (more than the CPU caches hold); the
    best of ``repeats`` passes."""
    sources = [_array(i, element_bytes) for i in range(distinct)]
    dest = np.empty_like(sources[0])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(copies):
            np.copyto(dest, sources[i % distinct])
        best = min(best, time.perf_counter() - t0)
    return Memcpy(element_bytes=element_bytes, copies=copies,
                  mb_per_s=copies * element_bytes / best / 1e6)


# -- GroupByKey memory ---------------------------------------------------------

def _value(i: int, nbytes: int) -> bytes:
    return bytes([i % 251]) * nbytes


class _MakeValue(beam.DoFn):
    def __init__(self, keys: int, nbytes: int) -> None:
        self._keys = keys
        self._nbytes = nbytes

    def process(self, i: int) -> Iterator[tuple[int, bytes]]:
        yield i % self._keys, _value(i, self._nbytes)


class _CheckGroup(beam.DoFn):
    def __init__(self) -> None:
        self._groups = Metrics.counter(NAMESPACE, "groups")
        self._values = Metrics.counter(NAMESPACE, "values")
        self._bytes = Metrics.counter(NAMESPACE, "bytes")

    def process(self, kv: tuple[int, Any]) -> None:
        self._groups.inc()
        n = b = 0
        for v in kv[1]:
            n += 1
            b += len(v)
        self._values.inc(n)
        self._bytes.inc(b)


def run_gbk_here(runner: str, values: int, value_bytes: int, keys: int,
                 extra: Sequence[str] = ()) -> dict[str, Any]:
    """The GroupByKey job in this process; what the child prints."""
    pipeline = beam.Pipeline(options=fake_gpu_options(runner, 1, 0, extra))
    _ = (pipeline
         | "Indexes" >> beam.Create(list(range(values)))
         | "Values" >> beam.ParDo(_MakeValue(keys, value_bytes))
         | "Group" >> beam.GroupByKey()
         | "Check" >> beam.ParDo(_CheckGroup()))
    wall, counters = _run_and_count(pipeline)
    want = {"groups": min(keys, values), "values": values, "bytes": values * value_bytes}
    if counters != want:
        raise RuntimeError("gbk %s: counted %s, expected %s" % (runner, counters, want))
    return {"wall_s": wall, "driver_peak_rss_bytes": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """This process's peak resident set: ``VmHWM`` on Linux.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps that across fork and
    exec, so a child started by a big process reports the parent's peak (the
    full benchmark's parent holds ~3.9 GB after its MNIST runs: the GroupByKey
    child then "peaked" at 3.8-3.9 GB in full runs and 1.4-1.6 GB alone).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class GbkMemory:
    runner: str
    values: int
    value_bytes: int
    keys: int
    shuffled_bytes: int
    wall_s: float                  # pipeline.run() to done, in the child
    driver_peak_rss_bytes: int     # VmHWM of the child (peak_rss_bytes)
    tree_peak_rss_bytes: int       # psutil: child + descendants, sampled every 50 ms
    process_wall_s: float          # the child process, interpreter start included

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tree_rss(pid: int) -> int:
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def gbk_memory(runner: str, values: int, value_bytes: int = MIB, keys: int = 10,
               extra: Sequence[str] = (), timeout_s: float = 900.0) -> GbkMemory:
    """Run the GroupByKey job in a child process; its peak memory and wall time."""
    cmd = [sys.executable, "-m", "benchmarks.dataplane", "gbk", "--runner", runner,
           "--values", str(values), "--value_bytes", str(value_bytes), "--keys", str(keys)]
    cmd += ["--extra=%s" % e for e in extra]
    peak = [0]
    started = time.time()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(child.pid))
            done.wait(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise
    finally:
        done.set()
        sampler.join(timeout=10)
    process_wall = time.time() - started
    if child.returncode != 0:
        raise RuntimeError("gbk %s child failed (exit %d): %s" % (runner, child.returncode,
                                                                 err[-3000:]))
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError("gbk %s child printed no result: %s" % (runner, err[-3000:]))
    got = json.loads(lines[-1])
    return GbkMemory(runner=runner, values=values, value_bytes=value_bytes, keys=keys,
                     shuffled_bytes=values * value_bytes, wall_s=got["wall_s"],
                     driver_peak_rss_bytes=got["driver_peak_rss_bytes"],
                     tree_peak_rss_bytes=peak[0], process_wall_s=process_wall)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="child side of the GroupByKey memory "
                                                 "benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    gbk = sub.add_parser("gbk")
    gbk.add_argument("--runner", choices=sorted(RUNNERS), required=True)
    gbk.add_argument("--values", type=int, required=True)
    gbk.add_argument("--value_bytes", type=int, default=MIB)
    gbk.add_argument("--keys", type=int, default=10)
    gbk.add_argument("--extra", action="append", default=[],
                     help="a further pipeline option, e.g. --extra=--shuffle_memory_budget=X")
    args = parser.parse_args(argv)
    from benchmarks import common
    common.ensure_importable_by_workers()
    print(json.dumps(run_gbk_here(args.runner, args.values, args.value_bytes, args.keys,
                                  args.extra)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
