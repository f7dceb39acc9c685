"""In-process fake executors for the job server's unit tests."""
from __future__ import annotations

import threading
from typing import Any, Iterable, Optional

from apache_beam.metrics import monitoring_infos
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2, metrics_pb2
from apache_beam.runners.runner import PipelineState


def user_counter(name: str, value: int) -> metrics_pb2.MonitoringInfo:
    info: metrics_pb2.MonitoringInfo = monitoring_infos.int64_user_counter(
        "fake.namespace", name, value, ptransform="fake-transform")
    return info


class FakeResult:
    """A JobResult the test drives: finish(), fail(), cancel() or drain() it
    (a drain is recorded; the test ends it with finish(drained=True))."""

    def __init__(self, infos: Iterable[metrics_pb2.MonitoringInfo] = ()) -> None:
        self._cond = threading.Condition()
        self._state: str = PipelineState.RUNNING
        self._error: Optional[str] = None
        self.infos = list(infos)
        self.cancel_calls = 0
        self.drain_calls = 0

    @property
    def state(self) -> str:
        with self._cond:
            return self._state

    def _end(self, state: str, error: Optional[str] = None) -> None:
        with self._cond:
            if self._state == PipelineState.RUNNING:
                self._state, self._error = state, error
                self._cond.notify_all()

    def finish(self, drained: bool = False) -> None:
        self._end(PipelineState.DRAINED if drained else PipelineState.DONE)

    def fail(self, error: str) -> None:
        self._end(PipelineState.FAILED, error)

    def wait_until_finish(self, duration: Optional[int] = None) -> Optional[str]:
        with self._cond:
            self._cond.wait_for(lambda: self._state != PipelineState.RUNNING)
            if self._state == PipelineState.FAILED:
                raise RuntimeError(self._error)
            return self._state

    def cancel(self) -> Optional[str]:
        self.cancel_calls += 1
        self._end(PipelineState.CANCELLED)
        return self.state

    def drain(self) -> Optional[str]:
        self.drain_calls += 1
        return PipelineState.DRAINING

    def metrics(self) -> Any:
        raise NotImplementedError("fake")

    def monitoring_infos(self) -> list[metrics_pb2.MonitoringInfo]:
        return list(self.infos)


class UndrainableResult(FakeResult):
    """A result without drain(), as another executor's may be."""

    drain = None  # type: ignore[assignment]


class ControlledExecutor:
    """Hands out a FakeResult per job; a test finishes or fails them by name."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.results: dict[str, FakeResult] = {}
        self.options: dict[str, PipelineOptions] = {}
        self.staged_dirs: dict[str, Optional[str]] = {}

    def run(self, pipeline_proto: beam_runner_api_pb2.Pipeline, options: PipelineOptions,
            job_name: str, staged_artifacts_dir: Optional[str]) -> FakeResult:
        result_type = UndrainableResult if job_name.startswith("undrainable") else FakeResult
        result = result_type([user_counter("elements", 7)])
        with self._cond:
            self.results[job_name] = result
            self.options[job_name] = options
            self.staged_dirs[job_name] = staged_artifacts_dir
            self._cond.notify_all()
        return result

    def result(self, job_name: str) -> FakeResult:
        """The job's result, once the server has started the job."""
        with self._cond:
            self._cond.wait_for(lambda: job_name in self.results)
            return self.results[job_name]


class RefusingExecutor:
    """Raises from run(): the job cannot even start."""

    def run(self, pipeline_proto: beam_runner_api_pb2.Pipeline, options: PipelineOptions,
            job_name: str, staged_artifacts_dir: Optional[str]) -> FakeResult:
        raise RuntimeError("no GPUs for job %s" % job_name)
