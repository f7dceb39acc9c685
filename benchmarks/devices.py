"""Issue 14: is every worker and every device busy?

Three benchmarks, each recording per element which device and worker ran it
and when (wall-clock start and end, returned as output elements and written
by a sink as JSON lines), so what they report comes from the elements
themselves, not from the runner:

* ``device_bound``: N elements of a ``time.sleep`` standing in for a device
  call, in a stage hinted ``accelerator="type:nvidia-h100;count:1"``, with the
  testing driver faking 1, 2 or 4 GPUs. Efficiency (see ``efficiency``).
* ``cpu_bound``: N elements of busy pure-Python CPU (a loop calibrated here
  to the wanted milliseconds), ``--num_workers`` 1 and 2; FnApiRunner for
  reference.
* ``streaming``: ``PeriodicImpulse`` feeding a hinted stage with 2 fake GPUs,
  run until a number of elements have run, then drained: how many devices ran
  elements.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from benchmarks.common import fake_gpu_options, median_run

HINT = "type:nvidia-h100;count:1"


# -- what runs on the workers ------------------------------------------------

def _where() -> dict[str, Any]:
    """This worker's device (runtime context) and identity."""
    import beam_gpu_runner
    ctx = beam_gpu_runner.runtime_context()
    gpus = ctx.gpus()
    return {"device": gpus[0].get_property("uuid") if gpus else "",
            "device_index": gpus[0].get_property("index") if gpus else "",
            "worker": ctx.worker_id or "pid-%d" % os.getpid(), "pid": os.getpid()}


class DeviceCall(beam.DoFn):
    """``time.sleep(seconds)`` standing in for a device call; yields where and when."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._where: dict[str, Any] = {}

    def setup(self) -> None:
        self._where = _where()

    def process(self, element: Any) -> Iterator[dict[str, Any]]:
        start = time.time()
        time.sleep(self._seconds)
        yield dict(self._where, element=element, start=start, end=time.time())


def spin(iterations: int) -> int:
    """Busy pure-Python CPU (holds the GIL, like most user code)."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


def calibrate_spin(seconds: float, trials: int = 5) -> int:
    """Iterations of ``spin`` that take ``seconds`` here (median of trials)."""
    probe = 100_000
    rates = []
    for _ in range(trials):
        t0 = time.perf_counter()
        spin(probe)
        rates.append(probe / (time.perf_counter() - t0))
    rates.sort()
    return max(1, int(rates[len(rates) // 2] * seconds))


class CpuCall(beam.DoFn):
    def __init__(self, iterations: int) -> None:
        self._iterations = iterations
        self._where: dict[str, Any] = {}

    def setup(self) -> None:
        self._where = _where()

    def process(self, element: Any) -> Iterator[dict[str, Any]]:
        start = time.time()
        spin(self._iterations)
        yield dict(self._where, element=element, start=start, end=time.time())


class JsonLinesSink(beam.DoFn):
    """One JSON-lines file per bundle in ``folder``, renamed into place when
    the bundle finishes (a reader never sees half a file)."""

    def __init__(self, folder: str) -> None:
        self._folder = folder
        self._lines: list[str] = []

    def start_bundle(self) -> None:
        self._lines = []

    def process(self, record: dict[str, Any]) -> None:
        self._lines.append(json.dumps(record, sort_keys=True))

    def finish_bundle(self) -> None:
        if not self._lines:
            return
        name = os.path.join(self._folder, "records-%s" % uuid.uuid4().hex)
        with open(name + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(self._lines) + "\n")
        os.rename(name + ".tmp", name + ".jsonl")
        self._lines = []


def read_records(folder: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(glob.glob(os.path.join(folder, "records-*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


# -- what the benchmarks report ---------------------------------------------

@dataclass(frozen=True)
class Spread:
    """What the per-element records say about one run."""

    elements: int
    devices_used: int
    workers_used: int
    per_device: dict[str, int]
    per_worker: dict[str, int]
    busy_s: float          # sum of the elements' own durations (end - start)
    span_s: float          # first element's start to last element's end
    first_start_s: float   # run() to the first element's start (start-up)
    #: first element's start to the moment every worker had started one (its
    #: workers start one after the other on a small host)
    all_up_s: float = 0.0
    #: busy time and span from that moment to the last element's end
    busy_after_all_up_s: float = 0.0
    span_after_all_up_s: float = 0.0

    @classmethod
    def of(cls, records: Sequence[dict[str, Any]], started: float) -> "Spread":
        per_device: dict[str, int] = {}
        per_worker: dict[str, int] = {}
        for r in records:
            if r["device"]:
                per_device[r["device"]] = per_device.get(r["device"], 0) + 1
            per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
        if not records:
            return cls(0, 0, 0, {}, {}, 0.0, 0.0, 0.0)
        first = min(r["start"] for r in records)
        last = max(r["end"] for r in records)
        all_up = max(min(r["start"] for r in records if r["worker"] == w)
                     for w in per_worker)
        return cls(elements=len(records), devices_used=len(per_device),
                   workers_used=len(per_worker), per_device=per_device,
                   per_worker=per_worker,
                   busy_s=sum(r["end"] - r["start"] for r in records),
                   span_s=last - first,
                   first_start_s=first - started,
                   all_up_s=all_up - first,
                   busy_after_all_up_s=sum(max(0.0, r["end"] - max(r["start"], all_up))
                                           for r in records),
                   span_after_all_up_s=last - all_up)


def efficiency(spread: Spread, parallelism: int) -> float:
    """Achieved speed-up over the ideal N-fold one, after start-up:
    ``busy_s / (N * span_s)``. ``busy_s`` is the serial time of the calls
    (sum of their measured durations), ``span_s`` the wall time from the
    first call's start to the last call's end; 1.0 when the calls are spread
    perfectly over N devices with no gap, 1/N when they run one after the
    other."""
    if spread.span_s <= 0 or parallelism < 1:
        return 0.0
    return spread.busy_s / (parallelism * spread.span_s)


def efficiency_after_startup(spread: Spread, parallelism: int) -> float:
    """``efficiency`` from the moment all N workers had started their first
    call (the issue's "after start-up": on this 2-core host the workers of a
    4-device pool become ready up to ~1.5 s apart, and the first ones run
    alone meanwhile). When fewer than N workers ran calls, there is no such
    moment: the whole span counts, so an unused device still costs."""
    if spread.workers_used < parallelism:
        return efficiency(spread, parallelism)
    if spread.span_after_all_up_s <= 0 or parallelism < 1:
        return 0.0
    return spread.busy_after_all_up_s / (parallelism * spread.span_after_all_up_s)


@dataclass(frozen=True)
class ParallelRun:
    runner: str
    devices: int          # fake GPUs (0: no hint, CPU stage)
    num_workers: int
    elements: int
    call_ms: float
    wall_s: float         # run() to done
    spread: Spread
    efficiency: float     # busy / (parallelism * span); parallelism = devices or workers
    elements_per_s: float  # elements / span
    efficiency_after_startup: float = 0.0   # the same once every worker had started

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run_batch(runner: str, options: PipelineOptions, elements: int, dofn: beam.DoFn,
               hinted: bool) -> tuple[float, list[dict[str, Any]], float]:
    folder = tempfile.mkdtemp(prefix="bench-devices-")
    try:
        pipeline = beam.Pipeline(options=options)
        call: beam.PTransform = beam.ParDo(dofn)
        if hinted and runner == "gpu":
            call = call.with_resource_hints(accelerator=HINT)
        _ = (pipeline
             | "Elements" >> beam.Create(list(range(elements)))
             | "Call" >> call
             | "Sink" >> beam.ParDo(JsonLinesSink(folder)))
        started = time.time()
        pipeline.run().wait_until_finish()
        wall = time.time() - started
        records = read_records(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if sorted(r["element"] for r in records) != list(range(elements)):
        raise RuntimeError("%s: %d records for %d elements (lost or repeated elements)"
                           % (runner, len(records), elements))
    return wall, records, started


def device_bound(runner: str, devices: int, elements: int = 96, call_s: float = 0.04,
                 num_workers: Optional[int] = None,
                 extra: Sequence[str] = ()) -> ParallelRun:
    """``elements`` calls of ``call_s`` in a hinted stage on ``devices`` fake
    GPUs. ``num_workers`` defaults to ``devices`` (GPU pools are capped by
    ``--num_workers``, whose default is the CPU count)."""
    workers = num_workers if num_workers is not None else devices
    options = fake_gpu_options(runner, devices, workers, extra)
    wall, records, started = _run_batch(runner, options, elements, DeviceCall(call_s),
                                        hinted=True)
    spread = Spread.of(records, started)
    parallelism = max(devices, 1) if runner == "gpu" else 1
    return ParallelRun(runner=runner, devices=devices if runner == "gpu" else 0,
                       num_workers=workers if runner == "gpu" else 0, elements=elements,
                       call_ms=call_s * 1000, wall_s=wall, spread=spread,
                       efficiency=efficiency(spread, parallelism),
                       elements_per_s=elements / spread.span_s if spread.span_s else 0.0,
                       efficiency_after_startup=efficiency_after_startup(spread, parallelism))


def cpu_bound(runner: str, num_workers: int, iterations: int, elements: int = 240,
              call_ms: float = 15.0, extra: Sequence[str] = ()) -> ParallelRun:
    """``elements`` calls of ``spin(iterations)`` (``call_ms`` here) in an
    unhinted stage with ``num_workers`` CPU workers."""
    options = fake_gpu_options(runner, 0, num_workers, extra)
    wall, records, started = _run_batch(runner, options, elements, CpuCall(iterations),
                                        hinted=False)
    spread = Spread.of(records, started)
    parallelism = num_workers if runner == "gpu" else 1
    return ParallelRun(runner=runner, devices=0, num_workers=num_workers if runner == "gpu"
                       else 0, elements=elements, call_ms=call_ms, wall_s=wall,
                       spread=spread, efficiency=efficiency(spread, parallelism),
                       elements_per_s=elements / spread.span_s if spread.span_s else 0.0,
                       efficiency_after_startup=efficiency_after_startup(spread, parallelism))


@dataclass(frozen=True)
class CpuScaling:
    iterations: int            # spin() iterations calibrated to call_ms
    call_ms: float
    runs: dict[str, dict[str, Any]]   # gpu_w1, gpu_w2, direct: median runs
    samples: dict[str, list[float]]   # elements/s of every repeat
    ratio_2_vs_1: float        # elements/s over the span, 2 workers / 1
    wall_ratio_2_vs_1: float   # elements / wall (start-up included), 2 / 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_scaling(elements: int, call_ms: float, repeats: int, progress: Any,
                workers: Sequence[int] = (1, 2)) -> CpuScaling:
    iterations = calibrate_spin(call_ms / 1000.0)
    progress("    calibrated: %d iterations of spin() = %.0f ms here", iterations, call_ms)
    runs: dict[str, list[ParallelRun]] = {}
    configs = [("gpu", n) for n in workers] + [("direct", 0)]
    for rep in range(repeats):
        for runner, n in configs:
            label = "gpu_w%d" % n if runner == "gpu" else "direct"
            r = cpu_bound(runner, n, iterations, elements, call_ms)
            progress("    %s (run %d/%d): %.1f elements/s over the span, %d worker(s) ran "
                     "elements, wall %.2f s", label, rep + 1, repeats, r.elements_per_s,
                     r.spread.workers_used, r.wall_s)
            runs.setdefault(label, []).append(r)
    medians = {label: median_run(rs, "elements_per_s") for label, rs in runs.items()}
    one, two = medians["gpu_w%d" % workers[0]], medians["gpu_w%d" % workers[-1]]
    return CpuScaling(
        iterations=iterations, call_ms=call_ms,
        runs={label: r.as_dict() for label, r in medians.items()},
        samples={label: [r.elements_per_s for r in rs] for label, rs in runs.items()},
        ratio_2_vs_1=two.elements_per_s / one.elements_per_s if one.elements_per_s else 0.0,
        wall_ratio_2_vs_1=one.wall_s / two.wall_s if two.wall_s else 0.0)


# -- streaming -----------------------------------------------------------------

@dataclass(frozen=True)
class StreamingRun:
    devices: int
    target_elements: int
    elements: int              # that ran before the drain finished
    fire_interval_s: float
    call_ms: float
    state: str                 # the job's end state (DRAINED)
    wall_s: float
    drain_s: float             # drain() to the end
    spread: Spread = field(default_factory=lambda: Spread.of([], 0.0))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def streaming(devices: int = 2, target_elements: int = 200, fire_interval_s: float = 0.005,
              call_s: float = 0.01, timeout_s: float = 180.0,
              extra: Sequence[str] = ()) -> StreamingRun:
    """``PeriodicImpulse`` (one element per ``fire_interval_s`` from when it
    starts) -> a hinted
    stage of ``call_s`` calls on ``devices`` fake GPUs -> a sink; drained once
    ``target_elements`` have run. A call longer than the interval means one
    device cannot keep up alone."""
    from apache_beam.transforms.periodicsequence import PeriodicImpulse, RebaseMode
    folder = tempfile.mkdtemp(prefix="bench-streaming-")
    try:
        options = fake_gpu_options("gpu", devices, devices, ["--streaming", *extra])
        pipeline = beam.Pipeline(options=options)
        # REBASE_ALL: the first element is due when the source starts running,
        # not when the pipeline was built (no backlog from the job's start-up)
        _ = (pipeline
             | "Impulse" >> PeriodicImpulse(start_timestamp=0, stop_timestamp=24 * 3600,
                                            fire_interval=fire_interval_s,
                                            rebase=RebaseMode.REBASE_ALL)
             | "Call" >> beam.ParDo(DeviceCall(call_s)).with_resource_hints(accelerator=HINT)
             | "Sink" >> beam.ParDo(JsonLinesSink(folder)))
        started = time.time()
        result = pipeline.run()
        deadline = started + timeout_s
        while len(read_records(folder)) < target_elements:
            if time.time() > deadline:
                result.cancel()
                raise RuntimeError("streaming: fewer than %d elements ran in %.0f s; job "
                                   "state %s" % (target_elements, timeout_s, result.state))
            if str(result.state) in ("FAILED", "CANCELLED", "DONE"):
                raise RuntimeError("streaming: the job ended %s before %d elements ran"
                                   % (result.state, target_elements))
            time.sleep(0.2)
        drain_started = time.time()
        result.drain()   # type: ignore[attr-defined]
        state = result.wait_until_finish()
        ended = time.time()
        records = read_records(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return StreamingRun(devices=devices, target_elements=target_elements,
                        elements=len(records), fire_interval_s=fire_interval_s,
                        call_ms=call_s * 1000, state=str(state), wall_s=ended - started,
                        drain_s=ended - drain_started, spread=Spread.of(records, started))
