"""The benchmark hook that keeps a UI page open (benchmarks/ui_poller.py)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from beam_gpu_runner.ui.server import serve
from ui.fakes import TestingStatusSource, streaming_job

# benchmarks/ lives at the repository root, next to tests/ (not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.ui_poller import UiPoller, free_port  # noqa: E402


def test_polls_the_first_jobs_page_and_counts_refusals_before_the_ui_is_up():
    port = free_port()
    poller = UiPoller("http://127.0.0.1:%d" % port, interval_s=0.01, also=["metrics"])
    poller.poll_once()                        # nothing listens yet
    assert poller.report().refused == 2 and poller.report().ok == 0
    source = TestingStatusSource([streaming_job("job-a")])
    server = serve(source, "127.0.0.1", port)
    try:
        poller.start()
        deadline = time.monotonic() + 60
        while poller.report().ok < 5:
            assert time.monotonic() < deadline, poller.report()
            time.sleep(0.01)
        report = poller.stop()
    finally:
        server.stop()
    assert report.job_id == "job-a"
    assert report.failed == 0
    assert report.latency_max_ms >= report.latency_mean_ms > 0
    assert source.calls >= 3                  # /api/jobs once, then the job page
