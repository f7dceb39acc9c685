"""Where worker processes run: the small seam between the pool and an engine.

Local subprocesses are the default (``placement/local.py``); Ray actors are the
scale-out (``placement/ray.py``). The worker pool never knows which.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

from beam_gpu_runner.resources.requirements import StageRequirements


@dataclass(frozen=True)
class WorkerLaunch:
    """Everything needed to start one Beam SDK harness (sdk_worker_main)."""

    worker_id: str
    control_address: str            # host:port of the runner's Fn API control service
    logging_address: str            # host:port of the runner's logging service
    pipeline_options_json: str      # PIPELINE_OPTIONS for sdk_worker_main
    requirements: StageRequirements
    env: Mapping[str, str] = field(default_factory=dict)  # resource env, extras


class WorkerProcess(Protocol):
    worker_id: str

    def is_alive(self) -> bool: ...

    def exit_description(self) -> str:
        """How it ended ("exit code 1", "killed by signal 9"), or "running"."""

    def stop(self, timeout: float = 5.0) -> None:
        """Ask it to end, then kill it after ``timeout``; waits for it."""

    def kill(self) -> None: ...


class Placement(Protocol):
    name: str
    #: True when the engine itself assigns devices (Ray); the pool then does not
    #: lease local GPUs and the worker derives its resource env from the engine.
    assigns_devices: bool

    def advertise_host(self) -> str:
        """The host name or address workers use to reach the runner."""

    def start_worker(self, launch: WorkerLaunch) -> WorkerProcess: ...

    def close(self) -> None: ...
