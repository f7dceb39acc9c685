"""The worker log relay: user code keeps its level, harness chatter is demoted."""
from __future__ import annotations

import logging

from apache_beam.portability.api import beam_fn_api_pb2

from beam_gpu_runner.workers.logs import WorkerLogService


class TestingContext:
    __test__ = False

    def invocation_metadata(self):
        return [("worker_id", "worker_7")]


def entry(message: str, location: str, severity) -> beam_fn_api_pb2.LogEntry:
    return beam_fn_api_pb2.LogEntry(message=message, log_location=location, severity=severity)


def relay(*entries: beam_fn_api_pb2.LogEntry) -> None:
    stream = WorkerLogService().Logging(
        iter([beam_fn_api_pb2.LogEntry.List(log_entries=list(entries))]), TestingContext())
    for _ in stream:
        pass


def test_levels(caplog):
    sev = beam_fn_api_pb2.LogEntry.Severity.Enum
    caplog.set_level(logging.DEBUG, logger="beam_gpu_runner.worker")
    relay(entry("window 1: 20 images", "/app/my_pipeline.py:12", sev.INFO),
          entry("Control channel established.",
                "/x/site-packages/apache_beam/runners/worker/sdk_worker.py:192", sev.INFO),
          entry("No session file found: ...",
                "/x/site-packages/apache_beam/runners/worker/sdk_worker_main.py:419", sev.WARN),
          entry("disk almost full", "/x/site-packages/apache_beam/io/x.py:1", sev.WARN))
    levels = {r.getMessage().split("] ")[1]: r.levelno for r in caplog.records}
    assert levels == {
        "window 1: 20 images": logging.INFO,
        "Control channel established.": logging.DEBUG,
        "No session file found: ...": logging.DEBUG,
        "disk almost full": logging.WARNING,
    }
    assert all("[worker_7 " in r.getMessage() for r in caplog.records)

