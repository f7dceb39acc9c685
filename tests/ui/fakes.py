"""Fakes of the web UI's tests: status sources and job results whose
``status()`` changes every time it is asked (elements rise)."""
from __future__ import annotations

import threading
import time
from typing import Optional, Sequence

from beam_gpu_runner.status import (
    WATERMARK_DONE, DeviceStatus, JobStatus, MetricStatus, StageStatus, WorkerStatus)

XSS_LABEL = "<img src=x onerror=alert(1)>"
GPU_HINT = "type:nvidia;count:1"


class TestingStatusSource:
    """A StatusSource whose jobs and devices the test sets."""
    __test__ = False

    def __init__(self, jobs: Sequence[JobStatus] = (),
                 devices: Sequence[DeviceStatus] = ()) -> None:
        self.jobs = list(jobs)
        self.devices = list(devices)
        self.calls = 0

    def job_statuses(self) -> list[JobStatus]:
        self.calls += 1
        return list(self.jobs)

    def device_statuses(self) -> list[DeviceStatus]:
        return list(self.devices)


def streaming_job(job_id: str = "job-1", tick: int = 1, *, label: str = XSS_LABEL,
                  state: str = "RUNNING", start_time: float = 1_700_000_000.0,
                  error: Optional[str] = None) -> JobStatus:
    """A three-stage streaming job (source -> hinted stage -> sink) after
    ``tick`` polls: 100 elements a tick through every stage."""
    n = 100 * tick
    watermark = int((start_time + tick) * 1e6)
    workers = (
        WorkerStatus("worker-1", "python[cpu]", "host-a", pid=101, state="busy",
                     bundles_running=1),
        WorkerStatus("worker-2", "python[gpu:1]", "host-a", pid=102, devices=("0",),
                     state="busy", bundles_running=1),
        WorkerStatus("worker-3", "python[gpu:1]", "host-a", pid=103, devices=("1",),
                     state="idle"))
    stages = (
        StageStatus("s1", "PeriodicImpulse/GenSequence", ("PeriodicImpulse",),
                    pool="python[cpu]", workers=("worker-1",), elements_in=n,
                    elements_out=n, bytes_in=8 * n, bytes_out=8 * n, bundles_running=1,
                    bundles_done=tick, bundles_split=tick, input_watermark=WATERMARK_DONE,
                    output_watermark=watermark),
        StageStatus("s2", label, (label, "Format"), hint=GPU_HINT, pool="python[gpu:1]",
                    workers=("worker-2", "worker-3"), elements_in=n, elements_out=n,
                    bytes_in=8 * n, bytes_out=16 * n, bundles_running=1,
                    bundles_done=tick, bundles_retried=1, input_watermark=watermark,
                    output_watermark=watermark - 500_000),
        StageStatus("s3", "WriteToSink", ("WriteToSink",), pool="python[cpu]",
                    workers=("worker-1",), elements_in=n, elements_out=0,
                    bytes_in=16 * n, bundles_done=tick, input_watermark=watermark - 500_000,
                    output_watermark=watermark - 500_000))
    metrics = (
        MetricStatus("mnist", "images", "counter", step=label, value=n),
        MetricStatus("mnist", "latency_ms", "distribution", step=label,
                     value={"count": tick, "sum": 12 * tick, "min": 5, "max": 20,
                            "mean": 12.0}),
        MetricStatus("mnist", "accuracy", "gauge", step="Stats",
                     value={"value": 92, "timestamp": start_time}),
        MetricStatus("mnist", "labels", "string_set", step="Stats", value=["a", "b"]))
    return JobStatus(
        job_id=job_id, name="streaming " + label, state=state, start_time=start_time,
        streaming=True, options={"streaming": "true", "job_name": "streaming",
                                 "aws_secret_access_key": "do-not-show",
                                 "files_to_stage": "/home/me/secret.py"},
        stages=stages, edges=(("s1", "s2"), ("s2", "s3")), workers=workers,
        metrics=metrics, error=error,
        traceback=("Traceback (most recent call last):\n  File \"x.py\"\n" + label
                   if error else None))


class TickingResult:
    """A job server JobResult with a ``status()`` that advances on every call,
    as a running streaming job's would. It runs until finished or cancelled."""

    def __init__(self, job_id: str = "runner-job", label: str = XSS_LABEL) -> None:
        self.job_id = job_id
        self.label = label
        self._cond = threading.Condition()
        self._state = "RUNNING"
        self._tick = 0
        self._start = time.time()

    @property
    def state(self) -> str:
        with self._cond:
            return self._state

    def status(self) -> JobStatus:
        with self._cond:
            self._tick += 1
            tick, state = self._tick, self._state
        return streaming_job(self.job_id, tick, label=self.label, state=state,
                             start_time=self._start)

    def finish(self) -> None:
        with self._cond:
            self._state = "DONE"
            self._cond.notify_all()

    def wait_until_finish(self, duration: Optional[int] = None) -> Optional[str]:
        with self._cond:
            self._cond.wait_for(lambda: self._state != "RUNNING")
            return self._state

    def cancel(self) -> Optional[str]:
        with self._cond:
            self._state = "CANCELLED"
            self._cond.notify_all()
        return "CANCELLED"

    def metrics(self) -> object:
        raise NotImplementedError("fake")

    def monitoring_infos(self) -> list[object]:
        return []


class TickingExecutor:
    """Hands out a TickingResult per job (its runner-side id is
    ``runner-<job name>``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.results: dict[str, TickingResult] = {}

    def run(self, pipeline_proto: object, options: object, job_name: str,
            staged_artifacts_dir: Optional[str]) -> TickingResult:
        result = TickingResult("runner-%s" % job_name)
        with self._cond:
            self.results[job_name] = result
            self._cond.notify_all()
        return result

    def result(self, job_name: str, timeout: float = 60.0) -> TickingResult:
        with self._cond:
            if not self._cond.wait_for(lambda: job_name in self.results, timeout):
                raise AssertionError("job %r never started" % job_name)
            return self.results[job_name]
