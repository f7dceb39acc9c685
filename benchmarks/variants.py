"""MNIST throughput under pipeline-option variants, optionally with a URL polled.

For A/B measurements of a runner option (e.g. ``--accelerator_chaining=off``
against ``=on``) and for "MNIST with the UI page open": every variant runs
``mnist.run_throughput`` on GpuRunner (steady slope between a small and a big
run), interleaved across variants, the median of ``repeats`` reported with
every sample; with ``ui`` each run serves its web UI (``--ui_port``) and a
``benchmarks.ui_poller.UiPoller`` reads it as an open job page does (once a
second) during the run; its counts are reported with the run::

    .venv/bin/python -m benchmarks.variants \\
        --variant off=--accelerator_chaining=off --variant on=--accelerator_chaining=on \\
        --images 1000000 --small 100000 --repeats 3 [--ui]

A variant's value is its options separated by spaces
(``--variant both="--a=1 --b=2"``); ``--variant base=`` is the runner's default;
the token ``+ui`` serves that variant's UI and keeps its page open (so
``--variant closed= --variant open=+ui`` measures the page's cost, interleaved).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from typing import Any, Callable, Mapping, Optional, Sequence

from benchmarks import common
from benchmarks.ui_poller import UiPoller, free_port

_LOG = logging.getLogger(__name__)

#: In a variant's options: serve its web UI and keep its job page open.
UI_TOKEN = "+ui"


def parse_variants(specs: Sequence[str]) -> dict[str, list[str]]:
    """``NAME=OPTIONS`` (options separated by spaces) -> {name: [options]}."""
    variants: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or name.startswith("-"):
            raise ValueError("--variant %r: write NAME=OPTIONS, e.g. "
                             "off=--accelerator_chaining=off (an empty OPTIONS is the "
                             "runner's default)" % spec)
        if name in variants:
            raise ValueError("--variant %r: the name %r is given twice" % (spec, name))
        variants[name] = rest.split()
    return variants


def mnist_variants(variants: Mapping[str, Sequence[str]], images: int, small_images: int,
                   repeats: int = 3, batch_size: int = 100, num_workers: int = 2,
                   ui: bool = False,
                   progress: Callable[..., None] = common.Progress(quiet=True),
                   ) -> dict[str, Any]:
    """MNIST steady throughput on GpuRunner for each variant's extra options,
    interleaved, median of ``repeats``; with ``ui``, its page open during each run."""
    from benchmarks import mnist
    common.ensure_importable_by_workers()
    runs: dict[str, list[Any]] = {}
    polls: dict[str, list[dict[str, Any]]] = {}
    for rep in range(repeats):
        for name, extra in variants.items():
            progress("mnist variant %s %s (run %d/%d): %d and %d images%s", name,
                     " ".join(extra) or "(defaults)", rep + 1, repeats, small_images, images,
                     ", web UI open" if ui or UI_TOKEN in extra else "")
            options = [o for o in extra if o != UI_TOKEN]
            poller = None
            if ui or UI_TOKEN in extra:
                port = free_port()
                options.append("--ui_port=%d" % port)
                poller = UiPoller("http://127.0.0.1:%d/" % port).start()
            try:
                r = mnist.run_throughput("gpu", images, small_images, batch_size,
                                         num_workers, extra=options)
            finally:
                if poller is not None:
                    polls.setdefault(name, []).append(poller.stop().as_dict())
            progress("    %s: %.0f images/s steady, accuracy %.2f%%", name,
                     r.steady_images_per_s, 100 * r.accuracy)
            runs.setdefault(name, []).append(r)
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        median = common.median_run(rs, "steady_images_per_s")
        out[name] = dict(median.as_dict(), options=list(variants[name]),
                         steady_samples=[r.steady_images_per_s for r in rs],
                         polls=polls.get(name, []))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=OPTIONS; repeat for each variant")
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--ui", action="store_true",
                        help="serve the web UI in every run and keep its job page open")
    parser.add_argument("--results_dir", default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    variants = parse_variants(args.variant)
    progress = common.Progress()
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": asdict(common.Machine.here()), "code": common.code_version(),
           "images": args.images, "small_images": args.small, "repeats": args.repeats,
           "ui": args.ui,
           "variants": mnist_variants(variants, args.images, args.small, args.repeats,
                                      args.batch_size, args.num_workers, args.ui,
                                      progress)}
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, "%s-variants.json" % time.strftime(
        "%Y-%m-%dT%H-%M-%S"))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, sort_keys=True)
    for name, r in out["variants"].items():
        polled = r["polls"]
        print("%-12s %10.0f images/s steady (samples %s)%s" % (
            name, r["steady_images_per_s"],
            ", ".join("%.0f" % x for x in r["steady_samples"]),
            "; polled: %d ok / %d failed" % (sum(p["ok"] for p in polled),
                                            sum(p["failed"] for p in polled))
            if polled else ""))
    progress("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
