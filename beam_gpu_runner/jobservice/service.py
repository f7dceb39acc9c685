"""The Beam Job API servicer: Prepare, Run, GetJobs, GetState, GetStateStream,
GetMessageStream, Cancel, Drain, GetJobMetrics, GetPipeline,
DescribePipelineOptions.

Jobs run through an injected ``JobExecutor``. Bad requests end with a gRPC
status naming the operation and the offending key, and never take the server
down: unknown ids are NOT_FOUND, a malformed pipeline or unreadable options
INVALID_ARGUMENT, a Run of a job that already ran or a Cancel or Drain of a
finished job FAILED_PRECONDITION, a Drain of a job whose executor cannot drain
UNIMPLEMENTED.
"""
from __future__ import annotations

import copy
import logging
import re
import threading
import uuid
from typing import Callable, Iterator, NoReturn, Optional

import grpc
from apache_beam.metrics import monitoring_infos
from apache_beam.pipeline import Pipeline
from apache_beam.portability.api import (
    beam_job_api_pb2, beam_job_api_pb2_grpc, beam_runner_api_pb2, endpoints_pb2)
from apache_beam.runners.pipeline_utils import validate_pipeline_graph

from beam_gpu_runner.jobservice.artifacts import ArtifactStore
from beam_gpu_runner.jobservice.executor import JobExecutor, JobResult
from beam_gpu_runner.jobservice.job import (
    DrainUnsupportedError, InvalidTransitionError, Job, JobState, StateEvent, is_terminal,
    state_name)
from beam_gpu_runner.jobservice.job_options import (
    JobOptionsError, ServerJobDefaults, describe_options, job_pipeline_options,
    options_dict)

_LOG = logging.getLogger(__name__)

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

#: The job name Beam's Python PortableRunner sends for every job.
GENERIC_JOB_NAME = "job"
#: Top-level transform labels a derived job name is built from, at most.
_NAME_LABELS = 3


def pipeline_label(pipeline: beam_runner_api_pb2.Pipeline) -> str:
    """The pipeline's top-level transform labels, ``Replay-Classify-Sink+2``
    (the first three and how many more), or "" when it has none.

    Transforms are listed in the order the pipeline applied them; Beam's
    own helpers (labels starting with ``ref_`` or ``_``) are left out.
    """
    comps = pipeline.components
    top: list[str] = []
    for root_id in pipeline.root_transform_ids:
        root = comps.transforms.get(root_id)
        if root is None:
            continue
        # A Python pipeline has one root (no label of the user's) holding the
        # user's top-level transforms.
        holder = not root.unique_name or root.unique_name.startswith("ref_")
        children = list(root.subtransforms) if holder else [root_id]
        for child in children:
            transform = comps.transforms.get(child)
            label = transform.unique_name if transform is not None else ""
            if label and not label.startswith(("ref_", "_")):
                top.append(label)
    if not top:
        return ""
    name = "-".join(top[:_NAME_LABELS])
    return name + ("+%d" % (len(top) - _NAME_LABELS) if len(top) > _NAME_LABELS else "")


def job_name_for(option: object, requested: str,
                 pipeline: Optional[beam_runner_api_pb2.Pipeline]) -> str:
    """A job's name: its ``--job_name`` option; else the name the client sent,
    unless it is the generic "job" that Beam's Python PortableRunner sends
    for every job (Java's sends its main class); else the pipeline's
    top-level transform labels (``pipeline_label``).

    The submitting program's script is not known here: Python's client sends
    neither ``sys.argv`` nor the script's name, only the options the user set
    and the pipeline.
    """
    if option:
        return str(option)
    if requested and requested != GENERIC_JOB_NAME:
        return requested
    label = pipeline_label(pipeline) if pipeline is not None else ""
    return label or requested or GENERIC_JOB_NAME


class PipelineValidationError(ValueError):
    """A submitted pipeline proto is not a well-formed pipeline."""

    def __init__(self, job_name: str, reason: str) -> None:
        super().__init__(job_name, reason)
        self.job_name = job_name
        self.reason = reason

    def __str__(self) -> str:
        return "pipeline of job %r is malformed: %s" % (self.job_name, self.reason)


def validate_pipeline(job_name: str, pipeline: beam_runner_api_pb2.Pipeline) -> None:
    """Raise PipelineValidationError unless every reference in ``pipeline`` resolves."""
    comps = pipeline.components
    if not pipeline.root_transform_ids:
        raise PipelineValidationError(job_name, "it has no root transforms")
    for tid in pipeline.root_transform_ids:
        if tid not in comps.transforms:
            raise PipelineValidationError(
                job_name, "root transform id %r is not among its transforms" % tid)
    for tid, transform in comps.transforms.items():
        for sub in transform.subtransforms:
            if sub not in comps.transforms:
                raise PipelineValidationError(
                    job_name, "transform %r names unknown subtransform %r" % (tid, sub))
        for tag, pcoll in list(transform.inputs.items()) + list(transform.outputs.items()):
            if pcoll not in comps.pcollections:
                raise PipelineValidationError(
                    job_name, "transform %r port %r names unknown PCollection %r"
                    % (tid, tag, pcoll))
        if transform.environment_id and transform.environment_id not in comps.environments:
            raise PipelineValidationError(
                job_name, "transform %r names unknown environment %r"
                % (tid, transform.environment_id))
    for pid, pcoll in comps.pcollections.items():
        if pcoll.coder_id not in comps.coders:
            raise PipelineValidationError(
                job_name, "PCollection %r names unknown coder %r" % (pid, pcoll.coder_id))
        if pcoll.windowing_strategy_id not in comps.windowing_strategies:
            raise PipelineValidationError(
                job_name, "PCollection %r names unknown windowing strategy %r"
                % (pid, pcoll.windowing_strategy_id))
    for cid, coder in comps.coders.items():
        for component in coder.component_coder_ids:
            if component not in comps.coders:
                raise PipelineValidationError(
                    job_name, "coder %r names unknown component coder %r"
                    % (cid, component))
    try:
        validate_pipeline_graph(pipeline)
    except (ValueError, KeyError) as exc:
        raise PipelineValidationError(job_name, str(exc)) from None


def _why_not_drainable(job_id: str, state: int) -> str:
    if state == JobState.STOPPED:
        return ("job %s was prepared but never run (state STOPPED): Run it first, "
                "or Cancel it to discard it" % job_id)
    if state == JobState.CANCELLING:
        return ("job %s is being cancelled (state CANCELLING), which drops the data "
                "it holds; a cancel cannot become a drain" % job_id)
    return ("job %s already ended in state %s: there is nothing left to drain "
            "(only a STARTING or RUNNING job can be drained)" % (job_id, state_name(state)))


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    _LOG.warning("Rejected request: %s (%s)", message, code.name)
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort returned")


class JobService(beam_job_api_pb2_grpc.JobServiceServicer):
    """Beam's JobService over an injected executor. Thread-safe."""

    def __init__(self,
                 executor: JobExecutor,
                 artifacts: ArtifactStore,
                 defaults: ServerJobDefaults = ServerJobDefaults(),
                 artifact_endpoint: Callable[[], Optional[str]] = lambda: None) -> None:
        self._executor = executor
        self._artifacts = artifacts
        self._defaults = defaults
        self._artifact_endpoint = artifact_endpoint
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._ran: set[str] = set()

    # -- helpers -------------------------------------------------------------

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def _job(self, operation: str, job_id: str, context: grpc.ServicerContext) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            _abort(context, grpc.StatusCode.NOT_FOUND,
                   "%s: no job with id %r (GetJobs lists the jobs of this server)"
                   % (operation, job_id))
        return job

    @staticmethod
    def _is_active(context: grpc.ServicerContext) -> Callable[[], bool]:
        return context.is_active

    # -- Job API -------------------------------------------------------------

    def Prepare(self, request: beam_job_api_pb2.PrepareJobRequest,
                context: grpc.ServicerContext) -> beam_job_api_pb2.PrepareJobResponse:
        try:
            values = options_dict(request.pipeline_options)
        except JobOptionsError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "Prepare: %s" % exc)
        job_name = job_name_for(values.get("job_name"), request.job_name,
                                request.pipeline if request.HasField("pipeline") else None)
        if not request.HasField("pipeline"):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                   "Prepare: job %r has no pipeline" % job_name)
        try:
            validate_pipeline(job_name, request.pipeline)
        except PipelineValidationError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "Prepare: %s" % exc)
        job_id = "%s-%s" % (_UNSAFE_ID_CHARS.sub("_", job_name)[:80], uuid.uuid4().hex[:12])
        pipeline = copy.deepcopy(request.pipeline)
        job = Job(job_id, job_name, pipeline, request.pipeline_options)
        self._artifacts.register(job_id, pipeline)
        with self._lock:
            self._jobs[job_id] = job
        _LOG.info("Prepared job %r as %s", job_name, job_id)
        endpoint = self._artifact_endpoint()
        return beam_job_api_pb2.PrepareJobResponse(
            preparation_id=job_id,
            artifact_staging_endpoint=(
                endpoints_pb2.ApiServiceDescriptor(url=endpoint) if endpoint else None),
            staging_session_token=job_id)

    def Run(self, request: beam_job_api_pb2.RunJobRequest,
            context: grpc.ServicerContext) -> beam_job_api_pb2.RunJobResponse:
        job_id = request.preparation_id
        job = self._job("Run", job_id, context)
        with self._lock:
            ran_before = job_id in self._ran
            runnable = not ran_before and job.state == JobState.STOPPED
            if runnable:
                self._ran.add(job_id)
        if ran_before:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                   "Run: job %s was already run (state %s)" % (job_id, state_name(job.state)))
        if not runnable:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                   "Run: job %s cannot run in state %s (only a prepared, STOPPED job can)"
                   % (job_id, state_name(job.state)))
        try:
            options = job_pipeline_options(job.pipeline_options, self._defaults)
        except JobOptionsError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "Run: job %s: %s" % (job_id, exc))
        staged_dir = self._artifacts.resolve(job_id, job.pipeline)
        Pipeline.merge_compatible_environments(job.pipeline)
        executor = self._executor

        def launch() -> JobResult:
            return executor.run(job.pipeline, options, job.job_name, staged_dir)

        try:
            job.start(launch, on_end=lambda: self._artifacts.discard(job_id))
        except InvalidTransitionError as exc:  # cancelled between the checks
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "Run: %s" % exc)
        _LOG.info("Running job %s", job_id)
        return beam_job_api_pb2.RunJobResponse(job_id=job_id)

    def GetJobs(self, request: beam_job_api_pb2.GetJobsRequest,
                context: grpc.ServicerContext) -> beam_job_api_pb2.GetJobsResponse:
        return beam_job_api_pb2.GetJobsResponse(job_info=[j.to_job_info() for j in self.jobs()])

    def GetState(self, request: beam_job_api_pb2.GetJobStateRequest,
                 context: grpc.ServicerContext) -> beam_job_api_pb2.JobStateEvent:
        return self._job("GetState", request.job_id, context).state_event().to_proto()

    def GetPipeline(self, request: beam_job_api_pb2.GetJobPipelineRequest,
                    context: grpc.ServicerContext
                    ) -> beam_job_api_pb2.GetJobPipelineResponse:
        job = self._job("GetPipeline", request.job_id, context)
        return beam_job_api_pb2.GetJobPipelineResponse(pipeline=job.pipeline)

    def Cancel(self, request: beam_job_api_pb2.CancelJobRequest,
               context: grpc.ServicerContext) -> beam_job_api_pb2.CancelJobResponse:
        job = self._job("Cancel", request.job_id, context)
        try:
            state = job.cancel()
        except InvalidTransitionError as exc:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                   "Cancel: job %s already ended in state %s"
                   % (request.job_id, state_name(exc.from_state)))
        if state == JobState.CANCELLED:
            self._artifacts.forget(job.job_id)
        return beam_job_api_pb2.CancelJobResponse(state=state)  # type: ignore[arg-type]

    def Drain(self, request: beam_job_api_pb2.DrainJobRequest,
              context: grpc.ServicerContext) -> beam_job_api_pb2.DrainJobResponse:
        """Stop the job's sources; it finishes what they read and ends DRAINED."""
        job = self._job("Drain", request.job_id, context)
        try:
            state = job.drain()
        except InvalidTransitionError as exc:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                   "Drain: %s" % _why_not_drainable(request.job_id, exc.from_state))
        except DrainUnsupportedError as exc:
            _abort(context, grpc.StatusCode.UNIMPLEMENTED, "Drain: %s" % exc)
        _LOG.info("Draining job %s", request.job_id)
        return beam_job_api_pb2.DrainJobResponse(state=state)  # type: ignore[arg-type]

    def GetStateStream(self, request: beam_job_api_pb2.GetJobStateRequest,
                       context: grpc.ServicerContext
                       ) -> Iterator[beam_job_api_pb2.JobStateEvent]:
        job = self._job("GetStateStream", request.job_id, context)
        for event in job.state_stream(self._is_active(context)):
            yield event.to_proto()

    def GetMessageStream(self, request: beam_job_api_pb2.JobMessagesRequest,
                         context: grpc.ServicerContext
                         ) -> Iterator[beam_job_api_pb2.JobMessagesResponse]:
        job = self._job("GetMessageStream", request.job_id, context)
        for entry in job.message_stream(self._is_active(context)):
            if isinstance(entry, StateEvent):
                yield beam_job_api_pb2.JobMessagesResponse(state_response=entry.to_proto())
            else:
                yield beam_job_api_pb2.JobMessagesResponse(message_response=entry)

    def GetJobMetrics(self, request: beam_job_api_pb2.GetJobMetricsRequest,
                      context: grpc.ServicerContext
                      ) -> beam_job_api_pb2.GetJobMetricsResponse:
        job = self._job("GetJobMetrics", request.job_id, context)
        result = job.result
        infos = []
        if result is not None:
            try:
                infos = [i for i in result.monitoring_infos()
                         if monitoring_infos.is_user_monitoring_info(i)]
            except Exception as exc:
                _abort(context, grpc.StatusCode.INTERNAL,
                       "GetJobMetrics: job %s: the executor's monitoring_infos() "
                       "raised %s" % (job.job_id, exc))
        # Metrics of a finished job are final (committed); before, attempted.
        if job.state in (JobState.DONE, JobState.DRAINED):
            metrics = beam_job_api_pb2.MetricResults(committed=infos)
        else:
            metrics = beam_job_api_pb2.MetricResults(attempted=infos)
        return beam_job_api_pb2.GetJobMetricsResponse(metrics=metrics)

    def DescribePipelineOptions(self, request: beam_job_api_pb2.DescribePipelineOptionsRequest,
                                context: grpc.ServicerContext
                                ) -> beam_job_api_pb2.DescribePipelineOptionsResponse:
        return beam_job_api_pb2.DescribePipelineOptionsResponse(options=describe_options())

    # -- shutdown ------------------------------------------------------------

    def cancel_all(self) -> list[Job]:
        """Cancel every job that has not ended; return those jobs."""
        cancelled = []
        for job in self.jobs():
            if is_terminal(job.state):
                continue
            try:
                job.cancel()
                cancelled.append(job)
            except InvalidTransitionError:
                pass  # it ended meanwhile
        return cancelled
