"""MNIST throughput under pipeline-option variants, optionally with a URL polled.

For A/B measurements of a runner option (e.g. ``--accelerator_chaining=off``
against ``=on``) and for "MNIST with the UI page open": every variant runs
``mnist.run_throughput`` on GpuRunner (steady slope between a small and a big
run), interleaved across variants, the median of ``repeats`` reported with
every sample; with ``poll_url`` a ``UrlPoller`` GETs that URL once per second
during each run and its counts are reported with the run::

    .venv/bin/python -m benchmarks.variants \\
        --variant off=--accelerator_chaining=off --variant on=--accelerator_chaining=on \\
        --images 1000000 --small 100000 --repeats 3 [--poll_url http://127.0.0.1:8081/]

A variant's value is its options separated by spaces
(``--variant both="--a=1 --b=2"``); ``--variant base=`` is the runner's default.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from benchmarks import common

_LOG = logging.getLogger(__name__)


@dataclass
class PollStats:
    url: str
    requests: int = 0
    ok: int = 0                 # 2xx answers
    errors: int = 0             # refused, timed out, non-2xx
    bytes_read: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    last_error: str = ""

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {"url": self.url, "requests": self.requests, "ok": self.ok,
                "errors": self.errors, "bytes_read": self.bytes_read,
                "latency_p50_ms": statistics.median(lat) if lat else 0.0,
                "latency_max_ms": lat[-1] if lat else 0.0, "last_error": self.last_error}


class UrlPoller:
    """GETs ``url`` every ``interval_s`` on a daemon thread (the first at once)
    until stopped; a context manager. Failures are counted, never raised."""

    def __init__(self, url: str, interval_s: float = 1.0, timeout_s: float = 5.0) -> None:
        self._url = url
        self._interval = interval_s
        self._timeout = timeout_s
        self._stats = PollStats(url)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "UrlPoller":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="url-poller", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> PollStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 5)
        return self.stats()

    def stats(self) -> PollStats:
        with self._lock:
            s = self._stats
            return PollStats(s.url, s.requests, s.ok, s.errors, s.bytes_read,
                             list(s.latencies_ms), s.last_error)

    def __enter__(self) -> "UrlPoller":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self._get_once()
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - began)))

    def _get_once(self) -> None:
        t0 = time.perf_counter()
        ok, nbytes, error = False, 0, ""
        try:
            with urllib.request.urlopen(self._url, timeout=self._timeout) as answer:
                nbytes = len(answer.read())
                ok = 200 <= answer.status < 300
                if not ok:
                    error = "HTTP %d" % answer.status
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = "%s: %s" % (type(exc).__name__, exc)
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        with self._lock:
            s = self._stats
            s.requests += 1
            if ok:
                s.ok += 1
                s.bytes_read += nbytes
                s.latencies_ms.append(elapsed_ms)
            else:
                s.errors += 1
                s.last_error = error
        if error:
            _LOG.debug("poller: GET %s failed: %s", self._url, error)


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
                   poll_url: Optional[str] = None,
                   progress: Callable[..., None] = common.Progress(quiet=True),
                   ) -> dict[str, Any]:
    """MNIST steady throughput on GpuRunner for each variant's extra options,
    interleaved, median of ``repeats``; with ``poll_url`` polled during each run."""
    from benchmarks import mnist
    common.ensure_importable_by_workers()
    runs: dict[str, list[Any]] = {}
    polls: dict[str, list[dict[str, Any]]] = {}
    for rep in range(repeats):
        for name, extra in variants.items():
            progress("mnist variant %s %s (run %d/%d): %d and %d images%s", name,
                     " ".join(extra) or "(defaults)", rep + 1, repeats, small_images, images,
                     ", polling %s" % poll_url if poll_url else "")
            poller = UrlPoller(poll_url).start() if poll_url else None
            try:
                r = mnist.run_throughput("gpu", images, small_images, batch_size,
                                         num_workers, extra=list(extra))
            finally:
                if poller is not None:
                    polls.setdefault(name, []).append(poller.stop().summary())
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
    parser.add_argument("--poll_url", default=None,
                        help="GET this URL once per second during every run")
    parser.add_argument("--results_dir", default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    variants = parse_variants(args.variant)
    progress = common.Progress()
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": asdict(common.Machine.here()), "code": common.code_version(),
           "images": args.images, "small_images": args.small, "repeats": args.repeats,
           "poll_url": args.poll_url,
           "variants": mnist_variants(variants, args.images, args.small, args.repeats,
                                      args.batch_size, args.num_workers, args.poll_url,
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
            "; polled: %d ok / %d errors" % (sum(p["ok"] for p in polled),
                                            sum(p["errors"] for p in polled))
            if polled else ""))
    progress("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
