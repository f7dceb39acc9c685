"""What a running or finished job looks like from outside: plain values.

The execution layer produces these (``GpuPipelineResult.status()``), the job
server collects them for its jobs, and the web UI, the Prometheus endpoint and
the terminal progress line only read them. Nothing here imports the runner:
values in, values out, all of them JSON-friendly (``to_json``).

Times are seconds since the epoch (floats); watermarks are Beam event times in
microseconds, ``None`` for "not started" (Beam's MIN) and ``WATERMARK_DONE``
for "complete" (Beam's MAX).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

#: A watermark that reached the end of time (its input is complete).
WATERMARK_DONE = 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class DeviceStatus:
    """One device a driver reports (a GPU), and who holds it."""

    resource: str                      # "gpu"
    index: str                         # physical index, as the driver reports it
    uuid: str
    name: str
    fake: bool = False                 # the testing driver's device
    #: job id, worker id and stage label of the holder (None: free)
    holder_job: Optional[str] = None
    holder_worker: Optional[str] = None
    holder_stage: Optional[str] = None
    #: share of the device the holder has (count:0.5 -> 0.5); None: whole
    share: Optional[float] = None
    #: NVML readings for real devices (None for fake ones or when unreadable)
    utilization_percent: Optional[float] = None
    memory_used_bytes: Optional[int] = None
    memory_total_bytes: Optional[int] = None
    #: recent NVML samples of a real device, oldest first:
    #: (time, utilisation percent or None, memory used bytes or None)
    samples: tuple[tuple[float, Optional[float], Optional[int]], ...] = ()


@dataclass(frozen=True)
class WorkerStatus:
    """One worker process of a job."""

    worker_id: str
    pool: str                          # the pool's description (environment[requirements])
    host: str
    pid: Optional[int] = None
    devices: tuple[str, ...] = ()      # physical GPU indexes it holds
    state: str = "running"             # starting | idle | busy | lost | stopped
    bundles_running: int = 0


@dataclass(frozen=True)
class StageStatus:
    """One fused stage: what runs where, and how much went through it."""

    name: str                          # the runner's stage id
    label: str                         # readable: the user's transform labels
    transforms: tuple[str, ...] = ()   # user transform names fused into it
    hint: str = ""                     # accelerator hint text, "" when none
    pool: str = ""                     # the worker pool, "" for runner-side stages
    runner_side: bool = False          # runs on the driver (streaming GroupByKey, ...)
    #: why unhinted transforms run on accelerator workers ("chained into ...")
    placement_note: str = ""
    workers: tuple[str, ...] = ()      # worker ids that ran its bundles
    elements_in: int = 0
    elements_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    bundles_running: int = 0
    bundles_done: int = 0
    bundles_retried: int = 0
    bundles_split: int = 0
    input_watermark: Optional[int] = None
    output_watermark: Optional[int] = None


@dataclass(frozen=True)
class MetricStatus:
    """One user metric (Beam counter, distribution, gauge, string set)."""

    namespace: str
    name: str
    kind: str                          # counter | distribution | gauge | string_set
    step: str = ""                     # the transform that reported it
    #: counter: int; distribution: {"count","sum","min","max","mean"};
    #: gauge: {"value","timestamp"}; string_set: sorted list of strings
    value: Any = None


@dataclass(frozen=True)
class JobStatus:
    """A job: its state, stage graph, workers, metrics and error."""

    job_id: str
    name: str
    state: str                         # Beam's PipelineState name: RUNNING, DONE, ...
    start_time: float
    end_time: Optional[float] = None
    streaming: bool = False
    #: pipeline options the user set (no environment variables, no credentials)
    options: dict[str, str] = field(default_factory=dict)
    stages: tuple[StageStatus, ...] = ()
    #: (producer stage name, consumer stage name) edges of the stage graph
    edges: tuple[tuple[str, str], ...] = ()
    workers: tuple[WorkerStatus, ...] = ()
    metrics: tuple[MetricStatus, ...] = ()
    error: Optional[str] = None
    traceback: Optional[str] = None
    #: where the workers' logs were kept, when the job failed
    logs_kept_in: Optional[str] = None

    @property
    def duration(self) -> Optional[float]:
        if self.end_time is None:
            return None
        return max(0.0, self.end_time - self.start_time)

    def stage(self, name: str) -> Optional[StageStatus]:
        return next((s for s in self.stages if s.name == name), None)


class StatusSource(Protocol):
    """Where the UI reads from: a job server's jobs, or one GpuRunner run."""

    def job_statuses(self) -> list[JobStatus]:
        """Every job known, newest last."""

    def device_statuses(self) -> list[DeviceStatus]:
        """Every device the configured drivers report, with its holder."""


def to_json(value: Any) -> Any:
    """A status value (or a list/dict of them) as plain JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, JobStatus):
            out["duration"] = value.duration
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


__all__ = ["DeviceStatus", "JobStatus", "MetricStatus", "StageStatus", "StatusSource",
           "WATERMARK_DONE", "WorkerStatus", "to_json"]
