"""Keep a web UI page "open" during a benchmark run: a poller that does what
an open job page does (one GET of ``/api/jobs/<id>`` a second), so a run with
the page open can be compared with one without it.

    from benchmarks.ui_poller import UiPoller, free_port
    port = free_port()
    with UiPoller("http://127.0.0.1:%d/" % port) as poller:
        run_stream(..., extra=["--ui_port=%d" % port])     # the run serves its UI there
    print(poller.report())        # requests answered, refused, failed, latency

Until the UI answers (the run is starting) connection refusals are counted, not
errors; the first job ``/api/jobs`` lists is the one polled (``job_id`` picks
one). ``also`` adds paths polled each round too (e.g. ``("api/devices",
"metrics")`` for the devices page and a Prometheus scrape).

From a shell, against any running UI::

    python -m benchmarks.ui_poller --url http://127.0.0.1:8080/ --seconds 60
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class PollReport:
    url: str
    job_id: Optional[str]
    interval_s: float
    ok: int
    refused: int              # nothing listening yet (or any more)
    failed: int               # answered with an error status, or broke
    latency_mean_ms: float
    latency_max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class UiPoller:
    """Polls a web UI on a daemon thread; use as a context manager."""

    def __init__(self, url: str, interval_s: float = 1.0, job_id: Optional[str] = None,
                 also: Sequence[str] = (), timeout_s: float = 10.0) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.interval_s = interval_s
        self.job_id = job_id
        self.also = tuple(also)
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._refused = 0
        self._failed = 0
        self._thread = threading.Thread(target=self._loop, name="ui-poller", daemon=True)

    def _get(self, path: str) -> Optional[bytes]:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url + path, timeout=self.timeout_s) as resp:
                body: bytes = resp.read()
        except urllib.error.HTTPError:
            with self._lock:
                self._failed += 1
            return None
        except (ConnectionRefusedError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            with self._lock:
                if isinstance(reason, ConnectionRefusedError):
                    self._refused += 1
                else:
                    self._failed += 1
            return None
        except OSError:
            with self._lock:
                self._failed += 1
            return None
        with self._lock:
            self._latencies.append(time.perf_counter() - started)
        return body

    def poll_once(self) -> None:
        if self.job_id is None:
            body = self._get("api/jobs")
            jobs = json.loads(body)["jobs"] if body else []
            if jobs:
                self.job_id = str(jobs[0]["job_id"])
        elif self._get("api/jobs/" + urllib.parse.quote(self.job_id, safe="")) is None:
            self.job_id = None   # a new job on this port (a run's next job): find it
        for path in self.also:
            self._get(path.lstrip("/"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)

    def start(self) -> "UiPoller":
        self._thread.start()
        return self

    def stop(self) -> PollReport:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + self.interval_s + 5)
        return self.report()

    def report(self) -> PollReport:
        with self._lock:
            lat = list(self._latencies)
            return PollReport(
                url=self.url, job_id=self.job_id, interval_s=self.interval_s, ok=len(lat),
                refused=self._refused, failed=self._failed,
                latency_mean_ms=statistics.fmean(lat) * 1000 if lat else 0.0,
                latency_max_ms=max(lat) * 1000 if lat else 0.0)

    def __enter__(self) -> "UiPoller":
        return self.start()

    def __exit__(self, *unused: object) -> None:
        self.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the UI, e.g. http://127.0.0.1:8080/")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--job_id", default=None)
    parser.add_argument("--also", action="append", default=[],
                        help="another path to poll each round (repeatable), e.g. metrics")
    args = parser.parse_args(argv)
    poller = UiPoller(args.url, args.interval, args.job_id, args.also).start()
    time.sleep(args.seconds)
    print(json.dumps(poller.stop().as_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
