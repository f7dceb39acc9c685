"""Starts and stops the workers of a pool, attaching leased devices.

Which worker runs a pool's bundles, by the environment the client asked for:

* EXTERNAL (``--environment_type=LOOPBACK`` or ``EXTERNAL``) without GPU
  needs: Beam's ``ExternalWorkerHandler`` asks the client's worker pool to
  start the worker, as every portable runner does;
* everything else, and every stage with an accelerator hint whatever its
  environment: our own SDK harness process (Beam's ``sdk_worker_main`` under
  the runner's interpreter) through the placement, holding the leased
  devices. A LOOPBACK worker is a thread in the client and cannot own a GPU.
  PROCESS, DOCKER and SUBPROCESS_SDK environments are taken as Python
  environments of this SDK: their command or image is not run, our harness
  replaces it (an environment of another SDK is not supported).

Our harnesses see the environment's staged artifacts (``--requirements_file``,
``--extra_package``, ``--save_main_session``) through ``EnvironmentStager``
when the job server handed the runner a staging folder.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Mapping, Optional, Protocol

from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2

from beam_gpu_runner.bridge.workers import Worker, external_worker, is_connected
from beam_gpu_runner.placement.api import Placement
from beam_gpu_runner.resources.runtime_context import RuntimeContext
from beam_gpu_runner.workers.errors import WorkerStartError
from beam_gpu_runner.workers.handler import ProcessWorkerHandler
from beam_gpu_runner.workers.pool import PoolKey
from beam_gpu_runner.workers.registry import WorkerRegistry
from beam_gpu_runner.workers.staging import EnvironmentStager, StagedEnvironment

_LOG = logging.getLogger(__name__)

_EXTERNAL_POLL_S = 0.02


class Assignment(Protocol):
    def env(self) -> dict[str, str]: ...


class DeviceSource(Protocol):
    """What the pool needs of the resource framework's allocator."""

    def acquire(self, stage_name: str, requirements: Any, hint_text: str,
                worker_id: str, job: str = "",
                should_stop: Callable[[], bool] = lambda: False) -> Assignment: ...

    def release(self, assignment: Assignment) -> None: ...


class WorkerStoppedError(RuntimeError):
    """A bundle was still running on a worker that the runner stopped."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.worker_id = worker_id

    def __str__(self) -> str:
        return ("worker %s was stopped (job cancelled or ended) while a bundle "
                "was running on it" % self.worker_id)


def runs_in_client(environment: beam_runner_api_pb2.Environment) -> bool:
    """EXTERNAL (e.g. LOOPBACK) environments: the client hosts the worker."""
    return environment.urn == common_urns.environments.EXTERNAL.urn


def _describe_environment(environment: beam_runner_api_pb2.Environment) -> str:
    urn = environment.urn
    if urn == common_urns.environments.PROCESS.urn:
        command = beam_runner_api_pb2.ProcessPayload.FromString(environment.payload).command
        return "PROCESS environment (command %r)" % command
    if urn == common_urns.environments.DOCKER.urn:
        image = beam_runner_api_pb2.DockerPayload.FromString(
            environment.payload).container_image
        return "DOCKER environment (image %r)" % image
    return "environment %s" % urn


# Environments whose worker is ours anyway: nothing to announce.
_OWN_HARNESS_URNS = frozenset([
    common_urns.environments.DEFAULT.urn, python_urns.SUBPROCESS_SDK,
    python_urns.EMBEDDED_PYTHON,
])


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
        job_id: str = "",
    ) -> None:
        self._registry = registry
        self._placement = placement
        self._environments = environments
        self._options_json = pipeline_options_json
        self._start_timeout = start_timeout
        self._devices = devices
        self._stage_names = stage_names
        self._hint_texts = hint_texts
        self._job_id = job_id
        self._assignments: dict[str, Assignment] = {}
        staging_dir = getattr(registry.provision_info, "artifact_staging_dir", None)
        self._stager = (EnvironmentStager(os.path.join(staging_dir, "workers"))
                        if staging_dir else None)
        self._announced: set[str] = set()
        self._starting: set[ProcessWorkerHandler] = set()
        #: the job is ending: workers still waiting for devices give up
        self._stopping = threading.Event()
        self._starting_lock = threading.Lock()

    def start(self, key: PoolKey) -> Worker:
        environment = self._environments[key.environment_id]
        server = self._registry.grpc_server
        assert server is not None, "start: the job's gRPC server is closed"
        state = self._registry.state_servicer
        provision = self._registry.provision_info.for_environment(environment)
        if runs_in_client(environment) and not key.requirements.needs_gpu:
            handler = external_worker(environment, state, provision, server)
            self._registry.add(handler)
            try:
                handler.start_worker()
                self._await_external(handler, environment)
            except Exception:
                self._registry.remove(handler)
                handler.close()
                raise
            return Worker(handler)
        self._announce(key, environment)
        staged = self._staged(key.environment_id, environment)
        handler = ProcessWorkerHandler(
            state, provision, server, self._placement, key.requirements,
            self._options_json, env={}, start_timeout=self._start_timeout,
            logging_address=self._registry.logging_address)
        env = self._resource_env(key, handler.worker_id)
        if staged is not None:
            env.update(staged.env())
        handler.set_environment(env)
        self._registry.add(handler)
        with self._starting_lock:
            self._starting.add(handler)
        try:
            handler.start_worker()
        except Exception:
            self._release(handler.worker_id)
            self._registry.remove(handler)
            raise
        finally:
            with self._starting_lock:
                self._starting.discard(handler)
        return Worker(handler)

    def abort_starts(self) -> None:
        """Make workers still starting give up now (the job is ending)."""
        self._stopping.set()
        with self._starting_lock:
            starting = list(self._starting)
        for handler in starting:
            handler.abort_start()

    def _await_external(self, handler: Any,
                        environment: beam_runner_api_pb2.Environment) -> None:
        """Wait (--worker_start_timeout) for the worker the client's pool started.

        Beam would wait forever for a pool that cannot start workers (say, one
        whose worker command fails); a job should fail with the reason instead.
        """
        deadline = time.monotonic() + self._start_timeout
        while not is_connected(handler):
            if time.monotonic() > deadline:
                pool = beam_runner_api_pb2.ExternalPayload.FromString(
                    environment.payload).endpoint.url
                raise WorkerStartError(
                    "start_worker: the client's worker pool at %s (EXTERNAL/LOOPBACK "
                    "environment) was asked for worker %s, which did not connect to "
                    "%s within %.1fs (--worker_start_timeout); see the pool's log"
                    % (pool, handler.worker_id, getattr(handler, "control_address", "?"),
                       self._start_timeout))
            time.sleep(_EXTERNAL_POLL_S)

    def _announce(self, key: PoolKey, environment: beam_runner_api_pb2.Environment) -> None:
        """Say once per environment why our harness runs instead of the client's."""
        if key.environment_id in self._announced or environment.urn in _OWN_HARNESS_URNS:
            return
        self._announced.add(key.environment_id)
        if runs_in_client(environment):
            _LOG.info("Stages %s have accelerator hints: they run on this runner's GPU "
                      "workers, not in the client's EXTERNAL/LOOPBACK worker pool",
                      self._stage_names.get(key) or [key.environment_id])
        else:
            _LOG.info("Environment %s is a %s: GpuRunner runs its own Python SDK "
                      "harness for it instead", key.environment_id,
                      _describe_environment(environment))

    def _staged(self, environment_id: str, environment: beam_runner_api_pb2.Environment
                ) -> Optional[StagedEnvironment]:
        if self._stager is None:
            return None
        return self._stager.prepare(environment_id, environment)

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
            ", ".join(stages), key.requirements, self._hint_texts.get(key, ""), worker_id,
            job=self._job_id, should_stop=self._stopping.is_set)
        self._assignments[worker_id] = assignment
        return assignment.env()

    def devices_of(self, worker_id: str) -> list[str]:
        """Physical indexes of the GPUs a worker holds (for status pages)."""
        assignment = self._assignments.get(worker_id)
        gpus = getattr(assignment, "gpus", ()) if assignment is not None else ()
        return [g.get_property("index") or "?" for g in gpus]

    def _release(self, worker_id: str) -> None:
        assignment = self._assignments.pop(worker_id, None)
        if assignment is not None and self._devices is not None:
            self._devices.release(assignment)

    def stop(self, worker: Worker) -> None:
        try:
            # A bundle still waiting on this worker (a cancelled job; a LOOPBACK
            # worker blocked in user code) must fail now rather than block the
            # pool's shutdown forever.
            worker.stop_requests(WorkerStoppedError(worker.worker_id))
            worker.handler.close()
        finally:
            self._registry.remove(worker.handler)
            self._release(worker.worker_id)
