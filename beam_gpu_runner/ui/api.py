"""The JSON documents the pages are built from (``/api/...``).

Every document is plain JSON built from ``beam_gpu_runner.status`` values and
carries ``now`` (the server's clock, seconds since the epoch), so a page
computes durations, throughput and watermark lag against one clock. Options
that look like credentials are masked and staged-file lists are left out,
whatever the source put in ``JobStatus.options``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Optional, Sequence

from beam_gpu_runner.status import (
    WATERMARK_DONE, DeviceStatus, JobStatus, StageStatus, to_json)

#: Option names whose values are never shown (credentials, tokens, keys).
SECRET_OPTION = re.compile(
    r"secret|passw|token|credential|private|api_?key|auth|cookie|session_key|"
    r"access_key|signing", re.IGNORECASE)
#: Options left out entirely: lists of the client's staged files.
DROPPED_OPTIONS = frozenset(["files_to_stage", "artifacts", "staged_files"])
HIDDEN = "(hidden)"


def public_options(options: Mapping[str, Any]) -> dict[str, str]:
    """``options`` without staged-file lists and with secret-looking values masked."""
    out: dict[str, str] = {}
    for key in sorted(options):
        if key in DROPPED_OPTIONS:
            continue
        value = options[key]
        out[str(key)] = HIDDEN if SECRET_OPTION.search(str(key)) else str(value)
    return out


def stage_done(stage: StageStatus) -> bool:
    """A stage is done once its output watermark reached the end of time."""
    return stage.output_watermark == WATERMARK_DONE


def job_summary(job: JobStatus) -> dict[str, Any]:
    """One row of the jobs page."""
    error_line: Optional[str] = None
    if job.error:
        error_line = job.error.strip().splitlines()[0] if job.error.strip() else None
    return {
        "job_id": job.job_id,
        "name": job.name,
        "state": job.state,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "duration": job.duration,
        "streaming": job.streaming,
        "options": public_options(job.options),
        "stages": len(job.stages),
        "stages_done": sum(1 for s in job.stages if stage_done(s)),
        "elements_in": sum(s.elements_in for s in job.stages),
        "bundles_running": sum(s.bundles_running for s in job.stages),
        "workers": len(job.workers),
        "error": error_line,
    }


def jobs_document(jobs: Sequence[JobStatus], now: float) -> dict[str, Any]:
    return {"now": now, "jobs": [job_summary(j) for j in jobs]}


def job_document(job: JobStatus, now: float) -> dict[str, Any]:
    public = dataclasses.replace(job, options=public_options(job.options))
    doc = to_json(public)
    doc["stages_done"] = sum(1 for s in job.stages if stage_done(s))
    return {"now": now, "job": doc}


def devices_document(devices: Sequence[DeviceStatus], now: float) -> dict[str, Any]:
    return {"now": now, "devices": [to_json(d) for d in devices]}


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities (e.g. the mean of an empty
    distribution) as None, which JSON can carry."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def find_job(jobs: Sequence[JobStatus], job_id: str) -> Optional[JobStatus]:
    return next((j for j in jobs if j.job_id == job_id), None)


__all__ = ["DROPPED_OPTIONS", "HIDDEN", "devices_document", "find_job", "job_document",
           "job_summary", "jobs_document", "json_safe", "public_options", "stage_done"]
