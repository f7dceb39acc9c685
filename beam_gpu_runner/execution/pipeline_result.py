"""GpuRunner's PipelineResult."""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from apache_beam.runners.runner import PipelineResult, PipelineState

from beam_gpu_runner.bridge.beam import FnApiMetrics
from beam_gpu_runner.execution.job import GpuJob
from beam_gpu_runner.status import JobStatus

_LOG = logging.getLogger(__name__)


class GpuPipelineResult(PipelineResult):
    def __init__(self, job: GpuJob) -> None:
        super().__init__(PipelineState.STARTING)
        self._job = job

    @property
    def state(self) -> str:
        return self._job.state

    @property
    def error(self) -> Optional[BaseException]:
        return self._job.error

    def wait_until_finish(self, duration: Optional[int] = None) -> str:
        """Wait (``duration`` in milliseconds, as in Beam); raise if it failed."""
        done = self._job.wait(None if duration is None else duration / 1000.0)
        if not done:
            return self.state
        if self.state == PipelineState.FAILED and self._job.error is not None:
            raise self._job.error
        return self.state

    def cancel(self) -> str:
        self._job.cancel()
        self._job.wait()
        return self.state

    def drain(self) -> str:
        """Drain the job, as Dataflow does: its sources stop reading
        (splittable DoFns truncate their restrictions: an unbounded one stops,
        bounded work is finished), what was read is processed, watermarks go
        to the end of time so every window and event-time timer fires, and
        the job ends by itself in state DRAINED with its workers stopped.

        Returns at once with the state (DRAINING); ``wait_until_finish()``
        returns DRAINED when it is done. Raises ``JobNotDrainableError`` for a
        job that already ended or is being cancelled.
        """
        return self._job.drain()

    def metrics(self) -> FnApiMetrics:
        return FnApiMetrics(self._job.monitoring_infos_by_stage(), user_metrics_only=True)

    def monitoring_metrics(self) -> FnApiMetrics:
        return FnApiMetrics(self._job.monitoring_infos_by_stage(), user_metrics_only=False)

    def monitoring_infos(self) -> list[Any]:
        return [info for infos in self._job.monitoring_infos_by_stage().values()
                for info in infos]

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the job's thread) once the job has ended."""
        self._job.when_done(callback)

    def status(self) -> JobStatus:
        """The job's stages, workers, counts, watermarks, metrics and error
        (what the web UI and the job server show)."""
        return self._job.status()
