"""Run the benchmarks: ``.venv/bin/python -m benchmarks.run [--quick|--smoke]``.

Writes ``benchmarks/results/<date>.json`` (git-ignored), copies the summary to
``benchmarks/LATEST.json`` and plots ``benchmarks/LATEST.png`` (both
committed; ``--quick``/``--smoke`` runs write them only with ``--publish``),
prints a table, and reports progress on stderr as it goes.
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


MODES = {
    "full": Sizes("full", 1_000_000, 100_000, 150_000, 10_000.0, 1_000_000, 100_000, 5, 3.0,
                  (1, 2), repeats=3),
    "quick": Sizes("quick", 200_000, 20_000, 30_000, 10_000.0, 200_000, 20_000, 3, 1.0, (1, 2)),
    "smoke": Sizes("smoke", 1_000, 0, 1_000, 10_000.0, 1_000, 0, 1, 0.2, (2,)),
}

TARGETS = {
    "mnist_vs_direct": 10.0,
    "mnist_share_of_raw": 0.5,
    "trivial_vs_direct": 1.5,
    "latency_p99_ms": 50.0,
    "warm_startup_s": 0.3,
}


def run_all(sizes: Sizes, progress: common.Progress, batch_size: int = 100
            ) -> dict[str, Any]:
    from benchmarks import mnist, startup, trivial
    common.ensure_importable_by_workers()
    machine = common.Machine.here()
    progress("machine: %d cores, Python %s, Beam %s, JAX %s", machine.cores, machine.python,
             machine.beam, machine.jax)
    progress("baseline: %s", common.BASELINE_NOTE)
    out: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": sizes.mode, "sizes": asdict(sizes), "machine": asdict(machine),
        "baseline": common.BASELINE_NOTE, "batch_size": batch_size,
        "code": common.code_version(),
    }
    workers = max(sizes.scaling)

    progress("1/6 raw classification limit (jitted JAX, batch %d, no Beam) ...", batch_size)
    raw = mnist.raw_limit(batch_size, sizes.raw_seconds)
    progress("    raw: %.0f images/s", raw.images_per_s)
    out["raw_limit"] = asdict(raw)

    runs: dict[str, list[Any]] = {}
    configs = [("direct", 0)] + [("gpu", n) for n in sorted(sizes.scaling, reverse=True)]
    for rep in range(sizes.repeats):   # interleaved: load spikes hit every runner
        for runner, nw in configs:
            label = runner if runner == "direct" else "gpu_w%d" % nw
            progress("2/6 mnist throughput on %s (run %d/%d): %d and %d images, unlimited "
                     "rate ...", label, rep + 1, sizes.repeats, sizes.stream_small,
                     sizes.stream_images)
            r = mnist.run_throughput(runner, sizes.stream_images, sizes.stream_small,
                                     batch_size, nw)
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
        gpu_best, stream["direct"]["steady_images_per_s"])
    out["mnist_throughput"]["share_of_raw"] = common.ratio(gpu_best, raw.images_per_s)
    out["scaling"] = {str(n): stream["gpu_w%d" % n]["steady_images_per_s"]
                      for n in sizes.scaling}

    latency: dict[str, Any] = {}
    for runner in ("direct", "gpu"):
        progress("3/6 mnist latency on %s: %d images at %.0f images/s ...", runner,
                 sizes.latency_images, sizes.latency_rate)
        lat = mnist.run_stream(runner, sizes.latency_images, sizes.latency_rate, batch_size,
                               workers if runner == "gpu" else 0)
        progress("    %s: p50 %.1f ms, p99 %.1f ms (achieved %.0f images/s)", runner,
                 lat.latency_p50_ms, lat.latency_p99_ms, lat.achieved_rate)
        latency[runner] = lat.as_dict()
    out["mnist_latency"] = latency

    triv_runs: dict[str, list[Any]] = {}
    for rep in range(sizes.repeats):
        for runner in ("direct", "gpu"):
            progress("4/6 trivial pipeline on %s (run %d/%d): %d elements ...", runner,
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

    progress("5/6 start-up: 1-element jobs, cold and through a warm job server ...")
    starts = {}
    for runner in ("direct", "gpu"):
        s = startup.cold(runner, sizes.startup_repeats)
        progress("    %s: median %.2f s", s.mode, s.median_s)
        starts[s.mode] = s.as_dict()
    for lean in (False, True):
        s = startup.warm_job_server(sizes.startup_repeats, lean_client=lean)
        progress("    %s: median %.2f s", s.mode, s.median_s)
        starts[s.mode] = s.as_dict()
    out["startup"] = starts

    progress("6/6 done")
    out["targets"] = evaluate(out)
    return out


def evaluate(out: dict[str, Any]) -> dict[str, Any]:
    measured = {
        "mnist_vs_direct": out["mnist_throughput"]["ratio_vs_direct"],
        "mnist_share_of_raw": out["mnist_throughput"]["share_of_raw"],
        "trivial_vs_direct": out["trivial"]["ratio_vs_direct"],
        "latency_p99_ms": out["mnist_latency"]["gpu"]["latency_p99_ms"],
        # The server's start; Beam's client-side pip freeze is shown apart.
        "warm_startup_s": out["startup"]["warm-jobserver-lean-client"]["median_s"],
    }
    lower_is_better = {"latency_p99_ms", "warm_startup_s"}
    return {k: {"target": TARGETS[k], "measured": float(v),
                "met": bool(v <= TARGETS[k]) if k in lower_is_better else bool(v >= TARGETS[k]),
                "better": "lower" if k in lower_is_better else "higher"}
            for k, v in measured.items()}


def table(out: dict[str, Any]) -> str:
    st, lat, tr, su = (out["mnist_throughput"], out["mnist_latency"], out["trivial"],
                       out["startup"])
    gpu_key = "gpu_w%d" % max(out["sizes"]["scaling"])
    rows = [
        ("benchmark", "GpuRunner", "DirectRunner*", "ratio / share"),
        ("MNIST steady throughput (img/s)", "%.0f" % st[gpu_key]["steady_images_per_s"],
         "%.0f" % st["direct"]["steady_images_per_s"], "%.2fx" % st["ratio_vs_direct"]),
        ("  raw JAX limit (img/s), share", "%.0f" % out["raw_limit"]["images_per_s"], "",
         "%.0f%%" % (100 * st["share_of_raw"])),
        ("  MNIST start-up to first sink (s)", "%.2f" % st[gpu_key]["startup_s"],
         "%.2f" % st["direct"]["startup_s"], ""),
        ("  accuracy", "%.2f%%" % (100 * st[gpu_key]["accuracy"]),
         "%.2f%%" % (100 * st["direct"]["accuracy"]), ""),
        ("MNIST latency p50 @%dk/s (ms)" % (out["sizes"]["latency_rate"] // 1000),
         "%.1f" % lat["gpu"]["latency_p50_ms"], "%.1f" % lat["direct"]["latency_p50_ms"], ""),
        ("MNIST latency p99 (ms)", "%.1f" % lat["gpu"]["latency_p99_ms"],
         "%.1f" % lat["direct"]["latency_p99_ms"], ""),
        ("Trivial pipeline, steady (elem/s)", "%.0f" % tr["gpu"]["steady_elements_per_s"],
         "%.0f" % tr["direct"]["steady_elements_per_s"], "%.2fx" % tr["ratio_vs_direct"]),
        ("  over the job's wall time (elem/s)", "%.0f" % tr["gpu"]["elements_per_s"],
         "%.0f" % tr["direct"]["elements_per_s"], "%.2fx" % tr["wall_ratio_vs_direct"]),
        ("1-element job, cold (s)", "%.2f" % su["cold-gpu"]["median_s"],
         "%.2f" % su["cold-direct"]["median_s"], ""),
        ("1-element job, warm job server (s)",
         "%.2f" % su["warm-jobserver-lean-client"]["median_s"], "", "lean client"),
        ("  with Beam's default client (s)", "%.2f" % su["warm-jobserver"]["median_s"], "",
         "+ pip freeze"),
    ]
    for n, v in sorted(out["scaling"].items()):
        rows.append(("MNIST throughput, %s worker(s)" % n, "%.0f" % v, "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("machine: %d cores; mode %s; %s" % (out["machine"]["cores"], out["mode"],
                                                      out["date"]))
    lines.append("* " + out["baseline"])
    lines.append("targets:")
    for k, t in out["targets"].items():
        lines.append("  %-20s %s target %s %g, measured %.3g" % (
            k, "MET    " if t["met"] else "NOT MET",
            "<=" if t["better"] == "lower" else ">=", t["target"], t["measured"]))
    return "\n".join(lines)


def plot(out: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    st, lat, tr, su = (out["mnist_throughput"], out["mnist_latency"], out["trivial"],
                       out["startup"])
    gpu_key = "gpu_w%d" % max(out["sizes"]["scaling"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    colors = {"GpuRunner": "tab:green", "DirectRunner": "tab:gray", "raw JAX": "tab:blue"}

    def bars(ax: Any, values: dict[str, float], title: str, unit: str) -> None:
        names = list(values)
        ax.bar([n.replace(" ", "\n") for n in names], [values[n] for n in names],
               color=[colors.get(n.split(" ")[0], colors.get(n, "tab:orange"))
                      for n in names])
        for i, n in enumerate(names):
            ax.text(i, values[n], "%.3g" % values[n], ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelsize=8)

    bars(axes[0, 0], {"GpuRunner": st[gpu_key]["steady_images_per_s"],
                      "DirectRunner": st["direct"]["steady_images_per_s"],
                      "raw JAX": out["raw_limit"]["images_per_s"]},
         "MNIST throughput (%.1fx direct, %.0f%% of raw)"
         % (st["ratio_vs_direct"], 100 * st["share_of_raw"]), "images/s")
    bars(axes[0, 1], {"GpuRunner p50": lat["gpu"]["latency_p50_ms"],
                      "GpuRunner p99": lat["gpu"]["latency_p99_ms"],
                      "DirectRunner p50": lat["direct"]["latency_p50_ms"],
                      "DirectRunner p99": lat["direct"]["latency_p99_ms"]},
         "latency at %.0f images/s" % out["sizes"]["latency_rate"], "ms")
    axes[0, 1].axhline(TARGETS["latency_p99_ms"], color="red", ls="--", lw=1)
    bars(axes[0, 2], {"GpuRunner steady": tr["gpu"]["steady_elements_per_s"],
                      "DirectRunner steady": tr["direct"]["steady_elements_per_s"],
                      "GpuRunner wall": tr["gpu"]["elements_per_s"],
                      "DirectRunner wall": tr["direct"]["elements_per_s"]},
         "trivial pipeline (%.2fx direct steady)" % tr["ratio_vs_direct"], "elements/s")
    bars(axes[1, 0], {"GpuRunner cold": su["cold-gpu"]["median_s"],
                      "DirectRunner cold": su["cold-direct"]["median_s"],
                      "GpuRunner warm server": su["warm-jobserver-lean-client"]["median_s"],
                      "GpuRunner warm, pip freeze": su["warm-jobserver"]["median_s"]},
         "1-element job wall time", "s")
    axes[1, 0].axhline(TARGETS["warm_startup_s"], color="red", ls="--", lw=1)
    scaling = sorted((int(k), v) for k, v in out["scaling"].items())
    axes[1, 1].plot([k for k, _ in scaling], [v for _, v in scaling], "o-", color="tab:green")
    axes[1, 1].set_xticks([k for k, _ in scaling])
    axes[1, 1].set_title("MNIST throughput vs --num_workers", fontsize=10)
    axes[1, 1].set_xlabel("workers")
    axes[1, 1].set_ylabel("images/s")
    axes[1, 1].set_ylim(bottom=0)
    ax = axes[1, 2]
    ax.axis("off")
    text = ["%s  %s" % ("MET" if t["met"] else "not met", k)
            for k, t in out["targets"].items()]
    ax.text(0, 1, "targets (%s, %d cores)\n\n%s" % (out["date"], out["machine"]["cores"],
                                                    "\n".join(text)),
            va="top", family="monospace", fontsize=9)
    fig.suptitle("beam-gpu-runner benchmarks (%s mode)" % out["mode"])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
    out = run_all(MODES[mode], progress, args.batch_size)
    written = write(out, args.results_dir, publish=args.publish or mode == "full")
    print(table(out))
    for path in written:
        progress("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
