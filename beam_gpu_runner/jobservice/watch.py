"""What the job server's web UI shows: a ``StatusSource`` over its jobs.

A job whose executor result has ``status()`` (GpuRunner's) shows what the
runner reports (stages, workers, metrics), under the server's id, name and
state; any other job (a prepared one, one that failed to start, another
executor's) shows what the server itself knows: id, name, state, start and
end time, options, and the error it logged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Any, Optional

from apache_beam.runners.job import utils as job_utils

from beam_gpu_runner.jobservice.job import (
    Job, JobMessage, JobState, is_terminal, state_name)
from beam_gpu_runner.jobservice.job_options import JobOptionsError, options_dict
from beam_gpu_runner.jobservice.service import JobService
from beam_gpu_runner.status import DeviceStatus, JobStatus
from beam_gpu_runner.ui.devices import LocalDevices

_LOG = logging.getLogger(__name__)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():   # a Struct's numbers are floats
        return str(int(value))
    return json.dumps(value, sort_keys=True)


def job_options_text(job: Job) -> dict[str, str]:
    """The job's options as ``{name: text}`` (the UI masks secret-looking ones)."""
    try:
        values = options_dict(job.pipeline_options)
    except JobOptionsError:
        values = job_utils.struct_to_dict(job.pipeline_options)
    return {str(k): _text(v) for k, v in values.items() if v is not None}


def _times(job: Job) -> tuple[float, Optional[float]]:
    history = job.state_history()
    start = history[0].timestamp.micros / 1e6
    for event in history:
        if event.state == JobState.STARTING:
            start = event.timestamp.micros / 1e6
            break
    end = history[-1].timestamp.micros / 1e6 if is_terminal(history[-1].state) else None
    return start, end


def _logged_error(job: Job) -> tuple[Optional[str], Optional[str]]:
    """The last error message the server logged for ``job``: (first line, rest)."""
    last: Optional[str] = None
    for entry in job.message_stream(lambda: False):
        importance = getattr(entry, "importance", None)
        if importance == JobMessage.JOB_MESSAGE_ERROR:
            last = str(getattr(entry, "message_text", ""))
    if not last:
        return None, None
    head, _, rest = last.strip().partition("\n")
    return head, rest.strip() or None


class JobServerStatus:
    """A StatusSource over a job server's jobs and this host's devices."""

    def __init__(self, service: JobService, devices: Optional[LocalDevices] = None) -> None:
        self._service = service
        self._devices = devices
        self._lock = threading.Lock()
        #: job ids a runner reports (and writes on its leases) -> the server's ids
        self._aliases: dict[str, str] = {}

    def job_status(self, job: Job) -> JobStatus:
        state = state_name(job.state)
        start, end = _times(job)
        options = job_options_text(job)
        error, trace = (None, None)
        if state == "FAILED":
            error, trace = _logged_error(job)
        reported = self._reported(job)
        if reported is None:
            return JobStatus(
                job_id=job.job_id, name=job.job_name, state=state, start_time=start,
                end_time=end, streaming=options.get("streaming") == "true",
                options=options, error=error, traceback=trace)
        if reported.job_id != job.job_id:
            with self._lock:
                self._aliases[reported.job_id] = job.job_id
        return dataclasses.replace(
            reported, job_id=job.job_id, name=job.job_name, state=state,
            start_time=reported.start_time or start,
            end_time=end if end is not None else reported.end_time,
            options=reported.options or options,
            error=reported.error or error,
            traceback=reported.traceback or (trace if not reported.error else None))

    def _reported(self, job: Job) -> Optional[JobStatus]:
        status = getattr(job.result, "status", None)
        if not callable(status):
            return None
        try:
            reported = status()
        except Exception as exc:   # the job is ending; show what the server knows
            _LOG.debug("status() of job %s raised: %s", job.job_id, exc, exc_info=True)
            return None
        return reported if isinstance(reported, JobStatus) else None

    def job_statuses(self) -> list[JobStatus]:
        return [self.job_status(job) for job in self._service.jobs()]

    def device_statuses(self) -> list[DeviceStatus]:
        if self._devices is None:
            return []
        jobs = self.job_statuses()
        with self._lock:
            aliases = dict(self._aliases)
        return [dataclasses.replace(d, holder_job=aliases.get(d.holder_job, d.holder_job))
                if d.holder_job else d for d in self._devices.statuses(jobs)]

    def close(self) -> None:
        if self._devices is not None:
            self._devices.close()


__all__ = ["JobServerStatus", "job_options_text"]
