"""What the job server runs jobs with: the ``JobExecutor`` seam.

The server never runs a pipeline itself. It hands each job's pipeline proto and
options to an executor, which must return promptly with a result object that
tracks the job running in the background (a ``JobResult``, shaped like Beam's
``apache_beam.runners.runner.PipelineResult``).

The default executor, ``GpuRunnerExecutor``, runs jobs on
``beam_gpu_runner.runner.GpuRunner``; tests and other deployments pick another
with ``beam-gpu-runner job-server --executor module:factory``
(see ``load_executor``).
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, Iterable, Optional, Protocol, runtime_checkable

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2, metrics_pb2

_LOG = logging.getLogger(__name__)

DEFAULT_EXECUTOR = "beam_gpu_runner.jobservice.executor:GpuRunnerExecutor"


@runtime_checkable
class JobResult(Protocol):
    """One running (or finished) job, as seen by the job server.

    ``state`` is a ``apache_beam.runners.runner.PipelineState`` string
    ('RUNNING', 'DONE', 'FAILED', 'CANCELLED', ...).
    """

    @property
    def state(self) -> str:
        ...

    def wait_until_finish(self, duration: Optional[int] = None) -> Optional[str]:
        """Block until the job ends (or ``duration`` ms pass); return the state.

        May raise when the job failed; the server reports the exception text as
        the job's error message.
        """

    def cancel(self) -> Optional[str]:
        """Ask the job to stop: end its workers and release their leases."""

    # Optional: ``drain() -> str``: stop reading, finish what was read, end
    # 'DRAINED' (GpuRunner's result has it). The Job API's Drain answers
    # UNIMPLEMENTED for a result without it. Not part of the Protocol, so that
    # results without it still are JobResults.

    def metrics(self) -> Any:
        """Beam ``MetricResults`` of the job."""

    def monitoring_infos(self) -> Iterable[metrics_pb2.MonitoringInfo]:
        """MonitoringInfo protos (user and system) of the job so far."""


@runtime_checkable
class JobExecutor(Protocol):
    """Starts jobs. ``run`` must not block until the job ends."""

    def run(self,
            pipeline_proto: beam_runner_api_pb2.Pipeline,
            options: PipelineOptions,
            job_name: str,
            staged_artifacts_dir: Optional[str]) -> JobResult:
        """Start ``pipeline_proto`` in the background and return its result.

        ``staged_artifacts_dir`` holds the files the client staged for this job
        (the pipeline's environment dependencies already point into it), or is
        None when nothing was staged.
        """


class GpuRunnerExecutor:
    """Runs jobs on ``beam_gpu_runner.runner.GpuRunner`` (imported lazily).

    The job's staged artifacts and name reach the workers through the
    runner's ``provision_info``, as with Beam's FnApiRunner: its
    ``artifact_staging_dir`` is where GpuRunner's worker factory prepares
    them for the SDK harnesses it starts (``beam_gpu_runner.workers.staging``).
    """

    def run(self,
            pipeline_proto: beam_runner_api_pb2.Pipeline,
            options: PipelineOptions,
            job_name: str,
            staged_artifacts_dir: Optional[str]) -> JobResult:
        # Lazy and untyped on purpose: the job server must start (and type
        # check) without pulling in the runner core.
        runner_module: Any = importlib.import_module("beam_gpu_runner.runner")
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.job import utils as job_utils
        from beam_gpu_runner.bridge.beam import ExtendedProvisionInfo
        struct = job_utils.dict_to_struct({
            "beam:option:%s:v1" % k: v
            for k, v in runner_module.portable_options(options).items()})
        provision = ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(
                retrieval_token="unused-retrieval-token", pipeline_options=struct),
            staged_artifacts_dir, job_name=job_name)
        _LOG.info("Starting job %s on GpuRunner (staged artifacts: %s)",
                     job_name, staged_artifacts_dir)
        result: JobResult = runner_module.GpuRunner(
            provision_info=provision).run_via_runner_api(pipeline_proto, options)
        return result


class ExecutorLoadError(ValueError):
    """``--executor`` named something that cannot be loaded or called."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(spec, reason)
        self.spec = spec
        self.reason = reason

    def __str__(self) -> str:
        return "cannot load job executor --executor=%r: %s" % (self.spec, self.reason)


def load_executor(spec: str = DEFAULT_EXECUTOR) -> JobExecutor:
    """Build the executor named ``module:factory``.

    ``factory`` is any callable taking no arguments (a class or a function)
    that returns an object with a ``run`` method as in ``JobExecutor``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ExecutorLoadError(spec, "expected the form module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExecutorLoadError(spec, "import of %s failed: %s" % (module_name, exc)) \
            from exc
    factory: Optional[Callable[[], object]] = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ExecutorLoadError(
            spec, "module %s has no callable %r" % (module_name, attr))
    executor = factory()
    if not callable(getattr(executor, "run", None)):
        raise ExecutorLoadError(
            spec, "factory returned %r, which has no run() method" % (executor,))
    return executor  # type: ignore[return-value]
