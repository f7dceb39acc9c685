"""Run the benchmarks: ``.venv/bin/python -m benchmarks.run [--quick|--smoke]``.

Writes ``benchmarks/results/<date>.json`` (git-ignored), copies the summary to
``benchmarks/LATEST.json`` and plots ``benchmarks/LATEST.png`` (both
committed; ``--quick``/``--smoke`` runs write them only with ``--publish``),
prints a table, and reports progress on stderr as it goes.
``--sections a,b`` runs only some benchmarks (names in ``SECTIONS``); a full
run of only some sections does not overwrite ``LATEST.*``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from benchmarks import common

_LOG = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is in a mode."""

    mode: str
    stream_images: int
    stream_small: int       # 0: no differential run (steady = images / wall)
    latency_images: int
    latency_rate: float
    trivial_elements: int
    trivial_small: int      # 0: no differential run
    startup_repeats: int
    raw_seconds: float
    scaling: tuple[int, ...]
    #: throughput runs per runner, interleaved across runners; the median is reported
    repeats: int = 1
    # issue 14: device-bound stage (sleep per element) on 1, 2, 4 fake GPUs
    device_elements: int = 96
    device_call_s: float = 0.04
    device_counts: tuple[int, ...] = (1, 2, 4)
    # issue 14: CPU-bound stage, --num_workers 1 and 2
    cpu_elements: int = 240
    cpu_call_ms: float = 15.0
    # issue 14: streaming, unbounded source -> hinted stage on 2 fake GPUs, drained
    streaming_elements: int = 300
    streaming_interval_s: float = 0.01
    streaming_call_s: float = 0.015
    # issue 15: 1 MiB elements across a hinted stage kept apart
    edge_elements: int = 500
    edge_small: int = 100   # 0: no differential run
    edge_element_bytes: int = 1 << 20
    edge_chaining: str = "off"   # passed as --accelerator_chaining=...
    # issue 15: GroupByKey of gbk_values x gbk_value_bytes over gbk_keys keys
    gbk_values: int = 1000
    gbk_value_bytes: int = 1 << 20
    gbk_keys: int = 10
    # bridge/spill.py microbenchmark: bytes per case
    spill_bytes: int = 256 << 20
    # issue 17: Beam's FnApiRunnerTest on both runners; a pytest -k selection
    # within it ("" runs it all)
    suite_select: str = ""


MODES = {
    "full": Sizes("full", 1_000_000, 100_000, 150_000, 10_000.0, 1_000_000, 100_000, 5, 3.0,
                  (1, 2), repeats=3),
    "quick": Sizes("quick", 200_000, 20_000, 30_000, 10_000.0, 200_000, 20_000, 3, 1.0, (1, 2),
                   device_elements=48, cpu_elements=120, streaming_elements=150,
                   edge_elements=200, edge_small=40, gbk_values=200, spill_bytes=64 << 20),
    "smoke": Sizes("smoke", 1_000, 0, 1_000, 10_000.0, 1_000, 0, 1, 0.2, (2,),
                   device_elements=8, device_call_s=0.01, device_counts=(2,),
                   cpu_elements=8, cpu_call_ms=2.0, streaming_elements=10,
                   edge_elements=8, edge_small=0, edge_element_bytes=64 << 10,
                   gbk_values=20, gbk_value_bytes=64 << 10, spill_bytes=2 << 20,
                   suite_select="test_create or test_flatten"),
}

TARGETS = {
    "mnist_vs_direct": 1.5,           # issue 15: the better of FnApiRunner fused / same code
    "mnist_share_of_raw": 0.5,
    "trivial_vs_direct": 1.5,
    "latency_p99_ms": 5.0,            # issue 15 (at 10k images/s)
    "warm_startup_s": 0.3,
    # issue 14
    "device_efficiency": 0.85,        # the lowest over the device counts
    "devices_used_share": 1.0,        # the lowest of devices used / devices
    "cpu_2_vs_1_workers": 1.85,
    "streaming_devices_used_share": 1.0,
    # issue 15
    "edge_mb_per_s": 1000.0,
    "gbk_driver_peak_gb": 1.5,        # judged on the full mode's 1 GB GroupByKey
    # issue 17 (its "Also": idle workers reused by the next job)
    "next_job_s": 0.1,                # a 1-element job after the first in a process
    "fnapi_suite_vs_direct": 1.3,     # Beam's FnApiRunnerTest, GpuRunner / FnApiRunner
}
LOWER_IS_BETTER = {"latency_p99_ms", "warm_startup_s", "gbk_driver_peak_gb", "next_job_s",
                   "fnapi_suite_vs_direct"}

#: What --sections may name, in the order they run.
SECTIONS = ("mnist", "trivial", "startup", "suite", "device_bound", "cpu_bound",
            "streaming", "fast_edge", "gbk_memory", "spill_table")


class Steps:
    """``k/N`` labels for the progress lines of the sections that run."""

    def __init__(self, sections: Sequence[str]) -> None:
        self._order = {name: i + 1 for i, name in enumerate(sections)}
        self._total = len(sections)

    def __call__(self, section: str) -> str:
        return "%d/%d" % (self._order[section], self._total)


def run_all(sizes: Sizes, progress: common.Progress, batch_size: int = 100,
            sections: Sequence[str] = SECTIONS) -> dict[str, Any]:
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError("run_all: unknown section(s) %s; choose from %s"
                         % (", ".join(unknown), ", ".join(SECTIONS)))
    sections = [name for name in SECTIONS if name in sections]
    common.ensure_importable_by_workers()
    machine = common.Machine.here()
    progress("machine: %d cores, Python %s, Beam %s, JAX %s", machine.cores, machine.python,
             machine.beam, machine.jax)
    progress("baseline: %s", common.BASELINE_NOTE)
    out: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": sizes.mode, "sizes": asdict(sizes), "machine": asdict(machine),
        "baseline": common.BASELINE_NOTE, "batch_size": batch_size,
        "code": common.code_version(), "sections": list(sections),
        # 1-minute load average: the host is shared; figures under load are noisier
        "load_average": {"start": os.getloadavg()[0]},
    }
    step = Steps(sections)
    if "mnist" in sections:
        _run_mnist(out, sizes, progress, batch_size, step("mnist"))
    if "trivial" in sections:
        _run_trivial(out, sizes, progress, step("trivial"))
    if "startup" in sections:
        _run_startup(out, sizes, progress, step("startup"))
    if "suite" in sections:
        _run_suite(out, sizes, progress, step("suite"))
    if "device_bound" in sections:
        _run_device_bound(out, sizes, progress, step("device_bound"))
    if "cpu_bound" in sections:
        _run_cpu_bound(out, sizes, progress, step("cpu_bound"))
    if "streaming" in sections:
        _run_streaming(out, sizes, progress, step("streaming"))
    if "fast_edge" in sections:
        _run_fast_edge(out, sizes, progress, step("fast_edge"))
    if "gbk_memory" in sections:
        _run_gbk_memory(out, sizes, progress, step("gbk_memory"))
    if "spill_table" in sections:
        _run_spill_table(out, sizes, progress, step("spill_table"))
    out["load_average"]["end"] = os.getloadavg()[0]
    progress("done (1-minute load average %.1f at the start, %.1f at the end, %d cores)",
             out["load_average"]["start"], out["load_average"]["end"], machine.cores)
    out["targets"] = evaluate(out)
    return out


def _run_mnist(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
               batch_size: int, step: str) -> None:
    from benchmarks import mnist
    workers = max(sizes.scaling)

    progress("%s raw classification limit (jitted JAX, batch %d, no Beam) ...", step,
             batch_size)
    raw = mnist.raw_limit(batch_size, sizes.raw_seconds)
    progress("    raw: %.0f images/s", raw.images_per_s)
    out["raw_limit"] = asdict(raw)

    runs: dict[str, list[Any]] = {}
    # FnApiRunner twice: hint dropped (one fused stage) and the same code
    # (the hint keeps its stage apart); GpuRunner is judged against the better.
    configs = [("direct", 0, False), ("direct_hinted", 0, True)] + [
        ("gpu_w%d" % n, n, False) for n in sorted(sizes.scaling, reverse=True)]
    for rep in range(sizes.repeats):   # interleaved: load spikes hit every runner
        for label, nw, keep_hint in configs:
            runner = "gpu" if label.startswith("gpu") else "direct"
            progress("%s mnist throughput on %s (run %d/%d): %d and %d images, unlimited "
                     "rate ...", step, label, rep + 1, sizes.repeats, sizes.stream_small,
                     sizes.stream_images)
            r = mnist.run_throughput(runner, sizes.stream_images, sizes.stream_small,
                                     batch_size, nw, keep_hint=keep_hint)
            progress("    %s: %.0f images/s steady, start-up %.2f s, wall %.1f s, "
                     "accuracy %.2f%%", label, r.steady_images_per_s, r.startup_s, r.wall_s,
                     100 * r.accuracy)
            runs.setdefault(label, []).append(r)
    stream: dict[str, Any] = {
        label: dict(common.median_run(rs, "steady_images_per_s").as_dict(),
                    steady_samples=[r.steady_images_per_s for r in rs])
        for label, rs in runs.items()}
    out["mnist_throughput"] = stream
    gpu_best = stream["gpu_w%d" % workers]["steady_images_per_s"]
    out["mnist_throughput"]["ratio_vs_direct"] = common.ratio(
        gpu_best, max(stream["direct"]["steady_images_per_s"],
                      stream["direct_hinted"]["steady_images_per_s"]))
    out["mnist_throughput"]["share_of_raw"] = common.ratio(gpu_best, raw.images_per_s)
    out["scaling"] = {str(n): stream["gpu_w%d" % n]["steady_images_per_s"]
                      for n in sizes.scaling}

    latency: dict[str, Any] = {}
    for runner in ("direct", "gpu"):
        progress("%s mnist latency on %s: %d images at %.0f images/s ...", step, runner,
                 sizes.latency_images, sizes.latency_rate)
        lat = mnist.run_stream(runner, sizes.latency_images, sizes.latency_rate, batch_size,
                               workers if runner == "gpu" else 0)
        progress("    %s: p50 %.1f ms, p99 %.1f ms (achieved %.0f images/s)", runner,
                 lat.latency_p50_ms, lat.latency_p99_ms, lat.achieved_rate)
        latency[runner] = lat.as_dict()
    out["mnist_latency"] = latency


def _run_trivial(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
                 step: str) -> None:
    from benchmarks import trivial
    workers = max(sizes.scaling)
    triv_runs: dict[str, list[Any]] = {}
    for rep in range(sizes.repeats):
        for runner in ("direct", "gpu"):
            progress("%s trivial pipeline on %s (run %d/%d): %d elements ...", step, runner,
                     rep + 1, sizes.repeats, sizes.trivial_elements)
            t = trivial.run_throughput(runner, sizes.trivial_elements, sizes.trivial_small,
                                       workers if runner == "gpu" else 0)
            progress("    %s: %.0f elements/s steady, %.0f over the wall time (%.2f s)",
                     runner, t.steady_elements_per_s, t.elements_per_s, t.wall_s)
            triv_runs.setdefault(runner, []).append(t)
    triv: dict[str, Any] = {
        runner: dict(common.median_run(ts, "steady_elements_per_s").as_dict(),
                     steady_samples=[t.steady_elements_per_s for t in ts])
        for runner, ts in triv_runs.items()}
    triv["ratio_vs_direct"] = common.ratio(triv["gpu"]["steady_elements_per_s"],
                                           triv["direct"]["steady_elements_per_s"])
    triv["wall_ratio_vs_direct"] = common.ratio(triv["gpu"]["elements_per_s"],
                                                triv["direct"]["elements_per_s"])
    out["trivial"] = triv


def _run_startup(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
                 step: str) -> None:
    from benchmarks import startup
    progress("%s start-up: 1-element jobs: the first of a process, the next ones, and "
             "through a warm job server ...", step)
    starts = {}
    for runner in ("direct", "gpu"):
        for s in (startup.cold(runner, sizes.startup_repeats),
                  startup.next_job(runner, sizes.startup_repeats)):
            progress("    %s: median %.3f s", s.mode, s.median_s)
            starts[s.mode] = s.as_dict()
    for lean in (False, True):
        s = startup.warm_job_server(sizes.startup_repeats, lean_client=lean)
        progress("    %s: median %.2f s", s.mode, s.median_s)
        starts[s.mode] = s.as_dict()
    out["startup"] = starts



def _run_suite(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
               step: str) -> None:
    from benchmarks import suite
    progress("%s Beam's FnApiRunnerTest on FnApiRunner, then on GpuRunner%s ...", step,
             " (-k %r)" % sizes.suite_select if sizes.suite_select else "")
    runs = {}
    for runner in ("direct", "gpu"):
        r = suite.run_suite(runner, sizes.suite_select)
        progress("    %s: %d passed in %.1f s (%.1f s with imports)", runner, r.passed,
                 r.session_s, r.wall_s)
        runs[runner] = r.as_dict()
    out["suite"] = dict(runs, deselected=suite.DESELECT, select=sizes.suite_select,
                        ratio_vs_direct=common.ratio(runs["gpu"]["session_s"],
                                                     runs["direct"]["session_s"]))


def _run_device_bound(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
                      step: str) -> None:
    from benchmarks import devices
    runs: dict[str, list[Any]] = {}
    configs = [("gpu", n) for n in sizes.device_counts] + [("direct", 1)]
    for rep in range(sizes.repeats):   # interleaved: load spikes hit every configuration
        for runner, n in configs:
            label = "gpu_%d" % n if runner == "gpu" else "direct"
            progress("%s device-bound stage on %s (run %d/%d): %d elements x %.0f ms, "
                     "%s ...", step, label, rep + 1, sizes.repeats, sizes.device_elements,
                     1000 * sizes.device_call_s,
                     "%d fake GPU(s), --num_workers=%d" % (n, n) if runner == "gpu"
                     else "no devices")
            r = devices.device_bound(runner, n, sizes.device_elements, sizes.device_call_s)
            progress("    %s: %d device(s) and %d worker(s) ran elements, efficiency %.0f%% "
                     "once all workers were up (%.2f s after the first element), %.0f%% "
                     "from the first element; span %.2f s, first element %.2f s after "
                     "run(), wall %.2f s", label, r.spread.devices_used,
                     r.spread.workers_used, 100 * r.efficiency_after_startup,
                     r.spread.all_up_s, 100 * r.efficiency, r.spread.span_s,
                     r.spread.first_start_s, r.wall_s)
            runs.setdefault(label, []).append(r)
    result: dict[str, Any] = {}
    for label, rs in runs.items():
        result[label] = dict(common.median_run(rs, "efficiency_after_startup").as_dict(),
                             efficiency_samples=[r.efficiency for r in rs],
                             efficiency_after_startup_samples=[
                                 r.efficiency_after_startup for r in rs],
                             devices_used_samples=[r.spread.devices_used for r in rs])
    gpu = {n: result["gpu_%d" % n] for n in sizes.device_counts}
    # The issue's measure: efficiency after start-up (all of the pool's workers up).
    result["efficiency_by_devices"] = {str(n): r["efficiency_after_startup"]
                                       for n, r in gpu.items()}
    result["efficiency_from_first_element_by_devices"] = {
        str(n): r["efficiency"] for n, r in gpu.items()}
    result["devices_used_by_devices"] = {str(n): min(r["devices_used_samples"])
                                         for n, r in gpu.items()}
    out["device_bound"] = result


def _run_cpu_bound(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
                   step: str) -> None:
    from benchmarks import devices
    progress("%s CPU-bound stage: %d elements x %.0f ms of pure-Python CPU, --num_workers "
             "1 and 2, and FnApiRunner ...", step, sizes.cpu_elements, sizes.cpu_call_ms)
    scaling = devices.cpu_scaling(sizes.cpu_elements, sizes.cpu_call_ms, sizes.repeats,
                                  progress)
    progress("    2 workers / 1 worker: %.2fx over the span, %.2fx over the wall time",
             scaling.ratio_2_vs_1, scaling.wall_ratio_2_vs_1)
    out["cpu_bound"] = scaling.as_dict()


def _run_streaming(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
                   step: str) -> None:
    from benchmarks import devices
    progress("%s streaming: PeriodicImpulse every %.0f ms -> hinted stage of %.0f ms calls on "
             "2 fake GPUs, drained after %d elements ...", step,
             1000 * sizes.streaming_interval_s, 1000 * sizes.streaming_call_s,
             sizes.streaming_elements)
    r = devices.streaming(2, sizes.streaming_elements, sizes.streaming_interval_s,
                          sizes.streaming_call_s)
    progress("    %d element(s) ran on %d device(s) %s, job %s (drain %.1f s)", r.elements,
             r.spread.devices_used, sorted(r.spread.per_device.values()), r.state, r.drain_s)
    out["streaming"] = dict(r.as_dict(), devices_used_share=r.spread.devices_used / r.devices)


def _run_fast_edge(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
                   step: str) -> None:
    from benchmarks import dataplane
    nbytes = sizes.edge_element_bytes
    progress("%s fast edge: memcpy of %d-byte arrays ...", step, nbytes)
    memcpy = dataplane.memcpy_bandwidth(nbytes, copies=max(sizes.edge_elements, 64))
    progress("    memcpy: %.0f MB/s", memcpy.mb_per_s)
    runs: dict[str, list[Any]] = {}
    configs = (("gpu", True), ("direct", True), ("direct", False))
    for rep in range(sizes.repeats):
        for runner, hinted in configs:
            label = runner if hinted else "direct_fused"
            progress("%s fast edge on %s (run %d/%d): %d and %d elements of %d bytes, "
                     "source -> %s -> sum%s ...", step, label, rep + 1, sizes.repeats,
                     sizes.edge_small, sizes.edge_elements, nbytes,
                     "hinted stage" if hinted else "unhinted stage (fused)",
                     ", --accelerator_chaining=%s" % sizes.edge_chaining
                     if runner == "gpu" and sizes.edge_chaining else "")
            r = dataplane.edge_throughput(runner, sizes.edge_elements, sizes.edge_small,
                                          nbytes, sizes.edge_chaining, hinted=hinted)
            progress("    %s: %.0f MB/s steady (wall %.2f s)", label, r.steady_mb_per_s,
                     r.wall_s)
            runs.setdefault(label, []).append(r)
    result: dict[str, Any] = {"memcpy": memcpy.as_dict()}
    for label, rs in runs.items():
        result[label] = dict(common.median_run(rs, "steady_mb_per_s").as_dict(),
                             steady_samples=[r.steady_mb_per_s for r in rs])
    gpu = result["gpu"]["steady_mb_per_s"]
    result["share_of_memcpy"] = common.ratio(gpu, memcpy.mb_per_s)
    result["ratio_vs_direct"] = common.ratio(gpu, result["direct"]["steady_mb_per_s"])
    out["fast_edge"] = result


def _run_gbk_memory(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
                    step: str) -> None:
    from benchmarks import dataplane
    result: dict[str, Any] = {}
    for runner in ("gpu", "direct"):
        progress("%s GroupByKey memory on %s: %d values x %d bytes over %d keys (%.2f GB), "
                 "in a child process ...", step, runner, sizes.gbk_values,
                 sizes.gbk_value_bytes, sizes.gbk_keys,
                 sizes.gbk_values * sizes.gbk_value_bytes / 1e9)
        r = dataplane.gbk_memory(runner, sizes.gbk_values, sizes.gbk_value_bytes,
                                 sizes.gbk_keys)
        progress("    %s: driver peak RSS %.2f GB (with workers, sampled: %.2f GB), %.1f s",
                 runner, r.driver_peak_rss_bytes / 1e9, r.tree_peak_rss_bytes / 1e9, r.wall_s)
        result[runner] = r.as_dict()
    out["gbk_memory"] = result


def _run_spill_table(out: dict[str, Any], sizes: Sizes, progress: common.Progress,
                     step: str) -> None:
    from benchmarks import spill_table
    progress("%s spill table microbenchmark: %d MB per case ...", step, sizes.spill_bytes >> 20)
    cases = spill_table.run(sizes.spill_bytes)
    for c in cases:
        progress("    %-12s %-15s add %7.0f MB/s, read %7.0f MB/s, %d run(s)", c.shape, c.table,
                 c.add_mb_per_s, c.read_mb_per_s, c.runs)
    out["spill_table"] = {"cases": [c.as_dict() for c in cases]}


def evaluate(out: dict[str, Any]) -> dict[str, Any]:
    """Each target whose section ran: target, measured, met."""
    measured: dict[str, float] = {}
    if "mnist_throughput" in out:
        measured["mnist_vs_direct"] = out["mnist_throughput"]["ratio_vs_direct"]
        measured["mnist_share_of_raw"] = out["mnist_throughput"]["share_of_raw"]
        measured["latency_p99_ms"] = out["mnist_latency"]["gpu"]["latency_p99_ms"]
    if "trivial" in out:
        measured["trivial_vs_direct"] = out["trivial"]["ratio_vs_direct"]
    if "startup" in out:
        # The server's start; Beam's client-side pip freeze is shown apart.
        measured["warm_startup_s"] = out["startup"]["warm-jobserver-lean-client"]["median_s"]
        measured["next_job_s"] = out["startup"]["next-gpu"]["median_s"]
    if "suite" in out:
        measured["fnapi_suite_vs_direct"] = out["suite"]["ratio_vs_direct"]
    if "device_bound" in out:
        db = out["device_bound"]
        measured["device_efficiency"] = min(db["efficiency_by_devices"].values())
        measured["devices_used_share"] = min(
            used / int(n) for n, used in db["devices_used_by_devices"].items())
    if "cpu_bound" in out:
        measured["cpu_2_vs_1_workers"] = out["cpu_bound"]["ratio_2_vs_1"]
    if "streaming" in out:
        measured["streaming_devices_used_share"] = out["streaming"]["devices_used_share"]
    if "fast_edge" in out:
        measured["edge_mb_per_s"] = out["fast_edge"]["gpu"]["steady_mb_per_s"]
    if "gbk_memory" in out:
        measured["gbk_driver_peak_gb"] = out["gbk_memory"]["gpu"]["driver_peak_rss_bytes"] / 1e9
    return {k: {"target": TARGETS[k], "measured": float(v),
                "met": bool(v <= TARGETS[k]) if k in LOWER_IS_BETTER else bool(v >= TARGETS[k]),
                "better": "lower" if k in LOWER_IS_BETTER else "higher"}
            for k, v in measured.items()}


Row = tuple[str, str, str, str]


def _rows_original(out: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "mnist_throughput" in out:
        st, lat = out["mnist_throughput"], out["mnist_latency"]
        gpu_key = "gpu_w%d" % max(out["sizes"]["scaling"])
        rows += [
            ("MNIST steady throughput (img/s)", "%.0f" % st[gpu_key]["steady_images_per_s"],
             "%.0f" % st["direct"]["steady_images_per_s"], "%.2fx" % st["ratio_vs_direct"]),
            ("  FnApiRunner, same code (hinted stage apart) (img/s)", "",
             "%.0f" % st["direct_hinted"]["steady_images_per_s"], ""),
            ("  raw JAX limit (img/s), share", "%.0f" % out["raw_limit"]["images_per_s"], "",
             "%.0f%%" % (100 * st["share_of_raw"])),
            ("  MNIST start-up to first sink (s)", "%.2f" % st[gpu_key]["startup_s"],
             "%.2f" % st["direct"]["startup_s"], ""),
            ("  accuracy", "%.2f%%" % (100 * st[gpu_key]["accuracy"]),
             "%.2f%%" % (100 * st["direct"]["accuracy"]), ""),
            ("MNIST latency p50 @%dk/s (ms)" % (out["sizes"]["latency_rate"] // 1000),
             "%.1f" % lat["gpu"]["latency_p50_ms"], "%.1f" % lat["direct"]["latency_p50_ms"],
             ""),
            ("MNIST latency p99 (ms)", "%.1f" % lat["gpu"]["latency_p99_ms"],
             "%.1f" % lat["direct"]["latency_p99_ms"], ""),
        ]
    if "trivial" in out:
        tr = out["trivial"]
        rows += [
            ("Trivial pipeline, steady (elem/s)", "%.0f" % tr["gpu"]["steady_elements_per_s"],
             "%.0f" % tr["direct"]["steady_elements_per_s"], "%.2fx" % tr["ratio_vs_direct"]),
            ("  over the job's wall time (elem/s)", "%.0f" % tr["gpu"]["elements_per_s"],
             "%.0f" % tr["direct"]["elements_per_s"], "%.2fx" % tr["wall_ratio_vs_direct"]),
        ]
    if "startup" in out:
        su = out["startup"]
        rows += [
            ("1-element job, first of a process (s)", "%.2f" % su["cold-gpu"]["median_s"],
             "%.2f" % su["cold-direct"]["median_s"], ""),
            ("1-element job, after the first (s)", "%.3f" % su["next-gpu"]["median_s"],
             "%.3f" % su["next-direct"]["median_s"], "idle workers reused"),
            ("1-element job, warm job server (s)",
             "%.2f" % su["warm-jobserver-lean-client"]["median_s"], "", "lean client"),
            ("  with Beam's default client (s)", "%.2f" % su["warm-jobserver"]["median_s"], "",
             "+ pip freeze"),
        ]
    if "suite" in out:
        su = out["suite"]
        rows.append(("Beam's FnApiRunnerTest, %d tests (s)" % su["gpu"]["passed"],
                     "%.1f" % su["gpu"]["session_s"], "%.1f" % su["direct"]["session_s"],
                     "%.2fx the time" % su["ratio_vs_direct"]))
    if "scaling" in out:
        for n, v in sorted(out["scaling"].items()):
            rows.append(("MNIST throughput, %s worker(s)" % n, "%.0f" % v, "", ""))
    return rows


def _rows_issue14(out: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    sizes = out["sizes"]
    if "device_bound" in out:
        db = out["device_bound"]
        for n in sizes["device_counts"]:
            r = db["gpu_%d" % n]
            rows.append((
                "Device-bound %d x %.0f ms, %d fake GPU(s): devices used, efficiency"
                % (sizes["device_elements"], 1000 * sizes["device_call_s"], n),
                "%d of %d, %.0f%%" % (r["spread"]["devices_used"], n,
                                      100 * r["efficiency_after_startup"]),
                "", "from 1st element %.0f%%, span %.2f s, all up after %.2f s"
                % (100 * r["efficiency"], r["spread"]["span_s"], r["spread"]["all_up_s"])))
        d = db["direct"]
        rows.append(("  FnApiRunner (one process): span (s)", "",
                     "%.2f" % d["spread"]["span_s"], "ideal/N: %s s" % " / ".join(
                         "%.2f" % (d["spread"]["busy_s"] / n) for n in sizes["device_counts"])))
    if "cpu_bound" in out:
        cb = out["cpu_bound"]
        runs = cb["runs"]
        rows.append(("CPU-bound %d x %.0f ms, 1 worker (elem/s over the span)"
                     % (sizes["cpu_elements"], cb["call_ms"]),
                     "%.1f" % runs["gpu_w1"]["elements_per_s"],
                     "%.1f" % runs["direct"]["elements_per_s"], ""))
        rows.append(("  2 workers (elem/s over the span)",
                     "%.1f" % runs["gpu_w2"]["elements_per_s"], "",
                     "%.2fx (wall %.2fx)" % (cb["ratio_2_vs_1"], cb["wall_ratio_2_vs_1"])))
        rows.append(("  mean call (ms): 1 worker / 2 workers / FnApiRunner",
                     "%.1f / %.1f" % tuple(1000 * runs[k]["spread"]["busy_s"]
                                           / max(1, runs[k]["spread"]["elements"])
                                           for k in ("gpu_w1", "gpu_w2")),
                     "%.1f" % (1000 * runs["direct"]["spread"]["busy_s"]
                               / max(1, runs["direct"]["spread"]["elements"])),
                     "CPU contention shows here"))
    if "streaming" in out:
        s = out["streaming"]
        rows.append(("Streaming, PeriodicImpulse -> 2 fake GPUs: devices used",
                     "%d of %d" % (s["spread"]["devices_used"], s["devices"]), "",
                     "%s elements per device, %s" % (
                         " / ".join(str(v) for v in sorted(s["spread"]["per_device"].values(),
                                                           reverse=True)) or "0",
                         s["state"].split(".")[-1])))
    return rows


def _rows_issue15(out: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "fast_edge" in out:
        fe = out["fast_edge"]
        mib = fe["gpu"]["element_bytes"] / (1 << 20)
        rows.append(("%.3g MiB elements across a hinted stage kept apart (MB/s)" % mib,
                     "%.0f" % fe["gpu"]["steady_mb_per_s"],
                     "%.0f" % fe["direct"]["steady_mb_per_s"],
                     "%.1f%% of memcpy" % (100 * fe["share_of_memcpy"])))
        rows.append(("  FnApiRunner, hint dropped, fused (MB/s)", "",
                     "%.0f" % fe["direct_fused"]["steady_mb_per_s"], ""))
        rows.append(("  memcpy of the same bytes (MB/s)", "%.0f" % fe["memcpy"]["mb_per_s"],
                     "", "ceiling"))
    if "gbk_memory" in out:
        g = out["gbk_memory"]
        rows.append(("GroupByKey %.2f GB: driver peak RSS (GB)"
                     % (g["gpu"]["shuffled_bytes"] / 1e9),
                     "%.2f" % (g["gpu"]["driver_peak_rss_bytes"] / 1e9),
                     "%.2f" % (g["direct"]["driver_peak_rss_bytes"] / 1e9), "VmHWM"))
        rows.append(("  with its workers, sampled (GB)",
                     "%.2f" % (g["gpu"]["tree_peak_rss_bytes"] / 1e9),
                     "%.2f" % (g["direct"]["tree_peak_rss_bytes"] / 1e9), "psutil, 50 ms"))
        rows.append(("  wall time (s)", "%.1f" % g["gpu"]["wall_s"],
                     "%.1f" % g["direct"]["wall_s"],
                     "%.0f / %.0f MB/s" % (g["gpu"]["shuffled_bytes"] / g["gpu"]["wall_s"] / 1e6,
                                           g["direct"]["shuffled_bytes"]
                                           / g["direct"]["wall_s"] / 1e6)))
    if "spill_table" in out:
        by = {(c["shape"], c["table"]): c for c in out["spill_table"]["cases"]}
        for shape in ("small-values", "large-values"):
            d, m, sp = (by.get((shape, t)) for t in ("dict", "table-in-memory",
                                                     "table-spilling"))
            if not (d and m and sp):
                continue
            rows.append(("spill.py %s add MB/s: table in memory / spilling" % shape,
                         "%.0f / %.0f" % (m["add_mb_per_s"], sp["add_mb_per_s"]), "",
                         "dict %.0f" % d["add_mb_per_s"]))
            rows.append(("  read MB/s: table in memory / spilled",
                         "%.0f / %.0f" % (m["read_mb_per_s"], sp["read_mb_per_s"]), "",
                         "dict %.0f" % d["read_mb_per_s"]))
    return rows


def table(out: dict[str, Any]) -> str:
    rows: list[Row] = [("benchmark", "GpuRunner", "DirectRunner*", "ratio / share")]
    rows += _rows_original(out) + _rows_issue14(out) + _rows_issue15(out)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("machine: %d cores; mode %s; %s" % (out["machine"]["cores"], out["mode"],
                                                      out["date"]))
    if "load_average" in out:
        lines.append("1-minute load average: %.1f at the start, %.1f at the end"
                     % (out["load_average"]["start"], out["load_average"].get("end", 0.0)))
    lines.append("* " + out["baseline"])
    lines.append("targets:")
    for k, t in out["targets"].items():
        lines.append("  %-28s %s target %s %g, measured %.3g" % (
            k, "MET    " if t["met"] else "NOT MET",
            "<=" if t["better"] == "lower" else ">=", t["target"], t["measured"]))
    return "\n".join(lines)


def plot(out: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(4, 3, figsize=(14, 14))
    colors = {"GpuRunner": "tab:green", "DirectRunner": "tab:gray", "raw JAX": "tab:blue",
              "memcpy": "tab:blue", "dict": "tab:blue"}

    def bars(ax: Any, values: dict[str, float], title: str, unit: str,
             log: bool = False) -> None:
        names = list(values)
        ax.bar([n.replace(" ", "\n") for n in names], [values[n] for n in names],
               color=[colors.get(n.split(" ")[0], colors.get(n, "tab:orange"))
                      for n in names])
        for i, n in enumerate(names):
            ax.text(i, values[n], "%.3g" % values[n], ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelsize=8)
        if log:
            ax.set_yscale("log")

    def missing(ax: Any, what: str) -> None:
        ax.axis("off")
        ax.text(0.5, 0.5, "%s: not run" % what, ha="center", va="center", fontsize=9)

    if "mnist_throughput" in out:
        st, lat = out["mnist_throughput"], out["mnist_latency"]
        gpu_key = "gpu_w%d" % max(out["sizes"]["scaling"])
        bars(axes[0, 0], {"GpuRunner": st[gpu_key]["steady_images_per_s"],
                          "Direct fused": st["direct"]["steady_images_per_s"],
                          "Direct same code": st["direct_hinted"]["steady_images_per_s"],
                          "raw JAX": out["raw_limit"]["images_per_s"]},
             "MNIST throughput (%.2fx the better Direct, %.0f%% of raw)"
             % (st["ratio_vs_direct"], 100 * st["share_of_raw"]), "images/s")
        bars(axes[0, 1], {"GpuRunner p50": lat["gpu"]["latency_p50_ms"],
                          "GpuRunner p99": lat["gpu"]["latency_p99_ms"],
                          "DirectRunner p50": lat["direct"]["latency_p50_ms"],
                          "DirectRunner p99": lat["direct"]["latency_p99_ms"]},
             "latency at %.0f images/s" % out["sizes"]["latency_rate"], "ms")
        axes[0, 1].axhline(TARGETS["latency_p99_ms"], color="red", ls="--", lw=1)
        scaling = sorted((int(k), v) for k, v in out["scaling"].items())
        axes[1, 1].plot([k for k, _ in scaling], [v for _, v in scaling], "o-",
                        color="tab:green")
        axes[1, 1].set_xticks([k for k, _ in scaling])
        axes[1, 1].set_title("MNIST throughput vs --num_workers", fontsize=10)
        axes[1, 1].set_xlabel("workers")
        axes[1, 1].set_ylabel("images/s")
        axes[1, 1].set_ylim(bottom=0)
    else:
        for ax in (axes[0, 0], axes[0, 1], axes[1, 1]):
            missing(ax, "MNIST")
    if "trivial" in out:
        tr = out["trivial"]
        bars(axes[0, 2], {"GpuRunner steady": tr["gpu"]["steady_elements_per_s"],
                          "DirectRunner steady": tr["direct"]["steady_elements_per_s"],
                          "GpuRunner wall": tr["gpu"]["elements_per_s"],
                          "DirectRunner wall": tr["direct"]["elements_per_s"]},
             "trivial pipeline (%.2fx direct steady)" % tr["ratio_vs_direct"], "elements/s")
    else:
        missing(axes[0, 2], "trivial pipeline")
    if "startup" in out:
        su = out["startup"]
        bars(axes[1, 0], {"GpuRunner cold": su["cold-gpu"]["median_s"],
                          "DirectRunner cold": su["cold-direct"]["median_s"],
                          "GpuRunner next job": su["next-gpu"]["median_s"],
                          "DirectRunner next job": su["next-direct"]["median_s"],
                          "GpuRunner warm server": su["warm-jobserver-lean-client"]["median_s"],
                          "GpuRunner warm, pip freeze": su["warm-jobserver"]["median_s"]},
             "1-element job wall time", "s")
        axes[1, 0].axhline(TARGETS["warm_startup_s"], color="red", ls="--", lw=1)
    else:
        missing(axes[1, 0], "start-up")
    ax = axes[1, 2]
    ax.axis("off")
    text = ["%s  %s" % ("MET" if t["met"] else "not met", k)
            for k, t in out["targets"].items()]
    ax.text(0, 1, "targets (%s, %d cores)\n\n%s" % (out["date"], out["machine"]["cores"],
                                                    "\n".join(text)),
            va="top", family="monospace", fontsize=9)
    _plot_issue14(out, axes[2], bars, missing)
    _plot_issue15(out, axes[3], bars, missing)
    fig.suptitle("beam-gpu-runner benchmarks (%s mode)" % out["mode"])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_issue14(out: dict[str, Any], axes: Any, bars: Any, missing: Any) -> None:
    if "device_bound" in out:
        db = out["device_bound"]
        ns = sorted(int(n) for n in db["efficiency_by_devices"])
        ax = axes[0]
        ax.plot(ns, [100 * db["efficiency_by_devices"][str(n)] for n in ns], "o-",
                color="tab:green", label="efficiency (%)")
        ax.axhline(100 * TARGETS["device_efficiency"], color="red", ls="--", lw=1)
        ax.set_ylim(0, 105)
        ax.set_xticks(ns)
        ax.set_xlabel("fake GPUs")
        ax.set_ylabel("efficiency (%)")
        twin = ax.twinx()
        twin.plot(ns, [db["devices_used_by_devices"][str(n)] for n in ns], "s--",
                  color="tab:purple", label="devices used")
        twin.plot(ns, ns, ":", color="tab:gray", lw=1)
        twin.set_ylim(0, max(ns) + 0.5)
        twin.set_ylabel("devices used (dotted: all)")
        ax.set_title("device-bound stage (%d x %.0f ms): efficiency, devices used"
                     % (out["sizes"]["device_elements"], 1000 * out["sizes"]["device_call_s"]),
                     fontsize=10)
    else:
        missing(axes[0], "device-bound stage")
    if "cpu_bound" in out:
        runs = out["cpu_bound"]["runs"]
        bars(axes[1], {"GpuRunner 1 worker": runs["gpu_w1"]["elements_per_s"],
                       "GpuRunner 2 workers": runs["gpu_w2"]["elements_per_s"],
                       "DirectRunner": runs["direct"]["elements_per_s"]},
             "CPU-bound stage (2 vs 1 worker: %.2fx)" % out["cpu_bound"]["ratio_2_vs_1"],
             "elements/s over the span")
    else:
        missing(axes[1], "CPU-bound stage")
    if "streaming" in out:
        s = out["streaming"]
        per = s["spread"]["per_device"]
        names = sorted(per)
        bars(axes[2], {"GPU %s" % n[-2:]: per[n] for n in names} or {"none": 0.0},
             "streaming: elements per device (%d of %d used)"
             % (s["spread"]["devices_used"], s["devices"]), "elements")
    else:
        missing(axes[2], "streaming")


def _plot_issue15(out: dict[str, Any], axes: Any, bars: Any, missing: Any) -> None:
    if "fast_edge" in out:
        fe = out["fast_edge"]
        bars(axes[0], {"GpuRunner apart": fe["gpu"]["steady_mb_per_s"],
                       "DirectRunner hinted": fe["direct"]["steady_mb_per_s"],
                       "DirectRunner fused": fe["direct_fused"]["steady_mb_per_s"],
                       "memcpy": fe["memcpy"]["mb_per_s"]},
             "fast edge (%.1f%% of memcpy)" % (100 * fe["share_of_memcpy"]), "MB/s", log=True)
        axes[0].axhline(TARGETS["edge_mb_per_s"], color="red", ls="--", lw=1)
    else:
        missing(axes[0], "fast edge")
    if "gbk_memory" in out:
        g = out["gbk_memory"]
        bars(axes[1], {"GpuRunner driver": g["gpu"]["driver_peak_rss_bytes"] / 1e9,
                       "GpuRunner +workers": g["gpu"]["tree_peak_rss_bytes"] / 1e9,
                       "DirectRunner": g["direct"]["driver_peak_rss_bytes"] / 1e9},
             "GroupByKey of %.2f GB: peak RSS" % (g["gpu"]["shuffled_bytes"] / 1e9), "GB")
        axes[1].axhline(TARGETS["gbk_driver_peak_gb"], color="red", ls="--", lw=1)
    else:
        missing(axes[1], "GroupByKey memory")
    if "spill_table" in out:
        cases = out["spill_table"]["cases"]
        short = {"dict": "dict", "table-in-memory": "in memory", "table-spilling": "spilling"}
        bars(axes[2], {"%s %s" % (short.get(c["table"], c["table"]), c["shape"].split("-")[0]):
                       c["add_mb_per_s"] for c in cases},
             "spill.py add (small: 100 B, large: 64 KiB values)", "MB/s",
             log=True)
    else:
        missing(axes[2], "spill table")


def write(out: dict[str, Any], results_dir: str, publish: bool) -> list[str]:
    os.makedirs(results_dir, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    path = os.path.join(results_dir, "%s-%s.json" % (stamp, out["mode"]))
    text = json.dumps(out, indent=2, sort_keys=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    written = [path]
    png = os.path.join(results_dir, "%s-%s.png" % (stamp, out["mode"]))
    plot(out, png)
    written.append(png)
    if publish:
        for src, name in ((path, "LATEST.json"), (png, "LATEST.png")):
            dest = os.path.join(HERE, name)
            with open(src, "rb") as f_in, open(dest, "wb") as f_out:
                f_out.write(f_in.read())
            written.append(dest)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="short run (~1 minute)")
    group.add_argument("--smoke", action="store_true",
                       help="minimal run (seconds), for the test suite")
    parser.add_argument("--publish", action="store_true",
                        help="also write LATEST.json/LATEST.png for --quick/--smoke")
    parser.add_argument("--results_dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--replot", metavar="JSON",
                        help="only redraw the plot and table of a results file")
    parser.add_argument("--log_level", default="WARNING")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of: %s (default: all)"
                        % ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # absl (JAX) and Beam log at INFO through the root logger; keep the table readable.
    logging.getLogger().setLevel(getattr(logging, args.log_level.upper()))
    if args.replot:
        with open(args.replot, encoding="utf-8") as f:
            saved = json.load(f)
        plot(saved, os.path.splitext(args.replot)[0] + ".png")
        print(table(saved))
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    progress = common.Progress(args.quiet)
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    out = run_all(MODES[mode], progress, args.batch_size, sections)
    # A full run of only some sections is not the published summary.
    publish = args.publish or (mode == "full" and len(out["sections"]) == len(SECTIONS))
    written = write(out, args.results_dir, publish=publish)
    print(table(out))
    for path in written:
        progress("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
