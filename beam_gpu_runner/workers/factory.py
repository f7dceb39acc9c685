"""Starts and stops the workers of a pool, attaching leased devices."""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Protocol

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import worker_handlers as beam_wh

from beam_gpu_runner.placement.api import Placement
from beam_gpu_runner.resources.runtime_context import RuntimeContext
from beam_gpu_runner.workers.handler import ProcessWorkerHandler
from beam_gpu_runner.workers.pool import PoolKey
from beam_gpu_runner.workers.registry import WorkerRegistry

_LOG = logging.getLogger(__name__)


class Assignment(Protocol):
    def env(self) -> dict[str, str]: ...


class DeviceSource(Protocol):
    """What the pool needs of the resource framework's allocator."""

    def acquire(self, stage_name: str, requirements: Any, hint_text: str,
                worker_id: str) -> Assignment: ...

    def release(self, assignment: Assignment) -> None: ...


def runs_in_client(environment: beam_runner_api_pb2.Environment) -> bool:
    """EXTERNAL (e.g. LOOPBACK) environments: the client hosts the worker."""
    return environment.urn == common_urns.environments.EXTERNAL.urn


class ProcessWorkerFactory:
    """Our own SDK harness processes for every environment Python can run,
    except EXTERNAL ones without GPU needs, which Beam's handler asks the
    client's worker pool to start (LOOPBACK)."""

    def __init__(
        self,
        registry: WorkerRegistry,
        placement: Placement,
        environments: dict[str, beam_runner_api_pb2.Environment],
        pipeline_options_json: str,
        start_timeout: float,
        devices: Optional[DeviceSource],
        stage_names: Mapping[PoolKey, list[str]],
        hint_texts: Mapping[PoolKey, str],
    ) -> None:
        self._registry = registry
        self._placement = placement
        self._environments = environments
        self._options_json = pipeline_options_json
        self._start_timeout = start_timeout
        self._devices = devices
        self._stage_names = stage_names
        self._hint_texts = hint_texts
        self._assignments: dict[str, Assignment] = {}

    def start(self, key: PoolKey) -> beam_wh.WorkerHandler:
        environment = self._environments[key.environment_id]
        server = self._registry.grpc_server
        assert server is not None, "start: the job's gRPC server is closed"
        state = self._registry.state_servicer
        provision = self._registry.provision_info.for_environment(environment)
        if runs_in_client(environment) and not key.requirements.needs_gpu:
            handler = beam_wh.WorkerHandler.create(environment, state, provision, server)
            self._registry.add(handler)
            handler.start_worker()
            return handler
        handler = ProcessWorkerHandler(
            state, provision, server, self._placement, key.requirements,
            self._options_json, env={}, start_timeout=self._start_timeout,
            logging_address=self._registry.logging_address)
        env = self._resource_env(key, handler.worker_id)
        handler._env = env
        self._registry.add(handler)
        try:
            handler.start_worker()
        except Exception:
            self._release(handler.worker_id)
            self._registry.remove(handler)
            raise
        return handler

    def _resource_env(self, key: PoolKey, worker_id: str) -> dict[str, str]:
        if not key.requirements.needs_gpu or self._placement.assigns_devices:
            # No GPU for this worker: hide the host's devices from it.
            env = RuntimeContext(worker_id=worker_id).to_env()
            if not self._placement.assigns_devices:
                env["CUDA_VISIBLE_DEVICES"] = ""
            return env
        if self._devices is None:
            raise RuntimeError(
                "start: stages %s need GPUs (%s) but no device allocator is configured"
                % (self._stage_names.get(key), key.requirements.describe()))
        stages = self._stage_names.get(key) or [key.environment_id]
        assignment = self._devices.acquire(
            ", ".join(stages), key.requirements, self._hint_texts.get(key, ""), worker_id)
        self._assignments[worker_id] = assignment
        return assignment.env()

    def _release(self, worker_id: str) -> None:
        assignment = self._assignments.pop(worker_id, None)
        if assignment is not None and self._devices is not None:
            self._devices.release(assignment)

    def stop(self, handler: beam_wh.WorkerHandler) -> None:
        try:
            handler.close()
        finally:
            self._registry.remove(handler)
            self._release(handler.worker_id)
