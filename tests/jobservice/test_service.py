"""The Job API over gRPC against an in-process server with fake executors:
the whole API, bad requests, several jobs, staging, options, shutdown."""
from __future__ import annotations

import os
import threading
import time
from typing import Iterator

import apache_beam as beam
import grpc
import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_artifact_api_pb2_grpc, beam_job_api_pb2, beam_runner_api_pb2)
from apache_beam.runners.job import utils as job_utils
from apache_beam.runners.portability import artifact_service

from beam_gpu_runner.jobservice.artifacts import staged_files
from beam_gpu_runner.jobservice.client import drain_main, jobs_main
from beam_gpu_runner.jobservice.job_options import ServerJobDefaults
from beam_gpu_runner.jobservice.main import main as job_server_main
from beam_gpu_runner.jobservice.server import JobServer
from beam_gpu_runner.options import GpuRunnerOptions

from .fakes import ControlledExecutor, RefusingExecutor
from .helpers import final_state, job_stub, pick_free_port

JobState = beam_job_api_pb2.JobState


def pipeline_proto() -> beam_runner_api_pb2.Pipeline:
    p = beam.Pipeline()
    _ = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x + 1)
    proto: beam_runner_api_pb2.Pipeline = p.to_runner_api()
    return proto


def prepare(stub: object, job_name: str = "job", pipeline: object = None,
            **option_values: object) -> beam_job_api_pb2.PrepareJobResponse:
    struct = job_utils.dict_to_struct(
        {"beam:option:%s:v1" % k: v for k, v in {"job_name": job_name, **option_values}.items()})
    request = beam_job_api_pb2.PrepareJobRequest(
        job_name="job", pipeline=pipeline if pipeline is not None else pipeline_proto(),
        pipeline_options=struct)
    response: beam_job_api_pb2.PrepareJobResponse = stub.Prepare(request)  # type: ignore[attr-defined]
    return response


@pytest.fixture
def executor() -> ControlledExecutor:
    return ControlledExecutor()


@pytest.fixture
def server(executor: ControlledExecutor) -> Iterator[JobServer]:
    srv = JobServer(executor, "127.0.0.1", 0,
                    defaults=ServerJobDefaults(
                        external_resources=("external-resources=gpu",
                                            "external-resource.gpu.amount=1"),
                        placement="local"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def stub(server: JobServer) -> object:
    return job_stub(server.endpoint)


def run(stub: object, job_id: str) -> None:
    stub.Run(beam_job_api_pb2.RunJobRequest(preparation_id=job_id))  # type: ignore[attr-defined]


def rpc_error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(request)  # type: ignore[operator]
        if not hasattr(result, "ByteSize"):  # a stream: errors come when read
            list(result)
    return info.value


# -- the happy path ----------------------------------------------------------

def test_lifecycle_over_the_api(stub: object, executor: ControlledExecutor) -> None:
    prep = prepare(stub, "wordcount")
    job_id = prep.preparation_id
    assert job_id.startswith("wordcount-")
    assert prep.artifact_staging_endpoint.url
    state = stub.GetState(beam_job_api_pb2.GetJobStateRequest(job_id=job_id))  # type: ignore[attr-defined]
    assert state.state == JobState.STOPPED
    run(stub, job_id)
    result = executor.result("wordcount")
    # While it runs, metrics are "attempted".
    metrics = stub.GetJobMetrics(beam_job_api_pb2.GetJobMetricsRequest(job_id=job_id))  # type: ignore[attr-defined]
    assert len(metrics.metrics.attempted) == 1 and not metrics.metrics.committed
    result.finish()
    assert final_state(stub, job_id) == JobState.DONE  # type: ignore[arg-type]
    metrics = stub.GetJobMetrics(beam_job_api_pb2.GetJobMetricsRequest(job_id=job_id))  # type: ignore[attr-defined]
    assert len(metrics.metrics.committed) == 1
    history = [e.state for e in stub.GetStateStream(  # type: ignore[attr-defined]
        beam_job_api_pb2.GetJobStateRequest(job_id=job_id))]
    assert history == [JobState.STOPPED, JobState.STARTING, JobState.RUNNING, JobState.DONE]
    messages = list(stub.GetMessageStream(  # type: ignore[attr-defined]
        beam_job_api_pb2.JobMessagesRequest(job_id=job_id)))
    assert messages[-1].state_response.state == JobState.DONE
    jobs = stub.GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info  # type: ignore[attr-defined]
    assert [(j.job_id, j.job_name, j.state) for j in jobs] == [(job_id, "wordcount", JobState.DONE)]
    pipeline = stub.GetPipeline(beam_job_api_pb2.GetJobPipelineRequest(job_id=job_id)).pipeline  # type: ignore[attr-defined]
    assert set(pipeline.components.transforms) == set(pipeline_proto().components.transforms)


def test_describe_pipeline_options(stub: object) -> None:
    described = {o.name: o for o in stub.DescribePipelineOptions(  # type: ignore[attr-defined]
        beam_job_api_pb2.DescribePipelineOptionsRequest()).options}
    Type = beam_job_api_pb2.PipelineOptionType
    assert described["external_resource"].type == Type.ARRAY
    assert described["external_resources_config"].type == Type.STRING
    assert described["placement"].default_value == "local"
    assert described["worker_start_timeout"].type == Type.NUMBER
    assert described["max_bundle_attempts"].type == Type.INTEGER
    assert described["streaming"].type == Type.BOOLEAN
    assert described["placement"].group == "GpuRunnerOptions"


def test_server_flags_merge_into_job_options(stub: object, executor: ControlledExecutor) -> None:
    job_id = prepare(stub, "merged", external_resource=["external-resource.gpu.amount=2"],
                     placement="ray", worker_start_timeout="12.5").preparation_id
    run(stub, job_id)
    result = executor.result("merged")
    gpu = executor.options["merged"].view_as(GpuRunnerOptions)
    assert gpu.external_resource == ["external-resources=gpu", "external-resource.gpu.amount=1",
                                     "external-resource.gpu.amount=2"]
    assert gpu.placement == "local"  # the server's choice
    assert gpu.worker_start_timeout == 12.5  # typed again
    result.finish()
    assert final_state(stub, job_id) == JobState.DONE  # type: ignore[arg-type]


def test_cancel_running_job(stub: object, executor: ControlledExecutor) -> None:
    job_id = prepare(stub, "long").preparation_id
    run(stub, job_id)
    result = executor.result("long")
    response = stub.Cancel(beam_job_api_pb2.CancelJobRequest(job_id=job_id))  # type: ignore[attr-defined]
    assert response.state in (JobState.CANCELLING, JobState.CANCELLED)
    assert final_state(stub, job_id) == JobState.CANCELLED  # type: ignore[arg-type]
    assert result.cancel_calls == 1


def test_several_jobs_one_failing(stub: object, executor: ControlledExecutor) -> None:
    ids = {name: prepare(stub, name).preparation_id for name in ("a", "b", "c")}
    for job_id in ids.values():
        run(stub, job_id)
    executor.result("b").fail("user code raised in b")
    executor.result("a").finish()
    executor.result("c").finish()
    assert final_state(stub, ids["a"]) == JobState.DONE  # type: ignore[arg-type]
    assert final_state(stub, ids["b"]) == JobState.FAILED  # type: ignore[arg-type]
    assert final_state(stub, ids["c"]) == JobState.DONE  # type: ignore[arg-type]
    errors = [m.message_response.message_text for m in stub.GetMessageStream(  # type: ignore[attr-defined]
        beam_job_api_pb2.JobMessagesRequest(job_id=ids["b"]))
        if m.HasField("message_response")]
    assert any("user code raised in b" in text for text in errors)


def test_executor_that_cannot_start_fails_only_that_job() -> None:
    with JobServer(RefusingExecutor()) as srv:
        stub = job_stub(srv.endpoint)
        job_id = prepare(stub, "refused").preparation_id
        run(stub, job_id)
        assert final_state(stub, job_id) == JobState.FAILED  # type: ignore[arg-type]
        texts = [m.message_response.message_text for m in stub.GetMessageStream(
            beam_job_api_pb2.JobMessagesRequest(job_id=job_id)) if m.HasField("message_response")]
        assert any("no GPUs for job refused" in t for t in texts)
        assert stub.GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info  # still serving


def test_stop_cancels_running_jobs(executor: ControlledExecutor) -> None:
    srv = JobServer(executor)
    srv.start()
    stub = job_stub(srv.endpoint)
    job_id = prepare(stub, "left-running").preparation_id
    run(stub, job_id)
    result = executor.result("left-running")
    job = srv.service.jobs()[0]
    srv.stop()
    assert job.state == JobState.CANCELLED and job.job_id == job_id
    assert result.cancel_calls == 1


# -- staging -----------------------------------------------------------------

def test_staged_artifacts_land_in_the_job_dir(stub: object, server: JobServer,
                                              executor: ControlledExecutor) -> None:
    proto = pipeline_proto()
    env_id = next(iter(proto.components.environments))
    env = proto.components.environments[env_id]
    env.dependencies.add(
        type_urn=common_urns.artifact_types.EMBEDDED.urn,
        type_payload=beam_runner_api_pb2.EmbeddedFilePayload(
            data=b"numpy>=1.26\n").SerializeToString(),
        role_urn=common_urns.artifact_roles.STAGING_TO.urn,
        role_payload=beam_runner_api_pb2.ArtifactStagingToRolePayload(
            staged_name="requirements.txt").SerializeToString())
    prep = prepare(stub, "staged", pipeline=proto)
    artifact_service.offer_artifacts(
        beam_artifact_api_pb2_grpc.ArtifactStagingServiceStub(
            grpc.insecure_channel(prep.artifact_staging_endpoint.url)),
        artifact_service.ArtifactRetrievalService(
            artifact_service.BeamFilesystemHandler(None).file_reader),
        prep.staging_session_token)
    run(stub, prep.preparation_id)
    result = executor.result("staged")
    staged_dir = executor.staged_dirs["staged"]
    assert staged_dir == os.path.join(server.artifacts.root, prep.preparation_id)
    pipeline = stub.GetPipeline(beam_job_api_pb2.GetJobPipelineRequest(  # type: ignore[attr-defined]
        job_id=prep.preparation_id)).pipeline
    files = staged_files(pipeline)
    assert [(f.environment_id, f.staged_name) for f in files] == [(env_id, "requirements.txt")]
    assert os.path.dirname(files[0].path) == staged_dir
    with open(files[0].path, "rb") as f:
        assert f.read() == b"numpy>=1.26\n"
    result.finish()
    assert final_state(stub, prep.preparation_id) == JobState.DONE  # type: ignore[arg-type]


# -- bad requests --------------------------------------------------------------

@pytest.mark.parametrize("method,request_", [
    ("GetState", beam_job_api_pb2.GetJobStateRequest(job_id="nope-1")),
    ("GetPipeline", beam_job_api_pb2.GetJobPipelineRequest(job_id="nope-1")),
    ("Cancel", beam_job_api_pb2.CancelJobRequest(job_id="nope-1")),
    ("GetJobMetrics", beam_job_api_pb2.GetJobMetricsRequest(job_id="nope-1")),
    ("GetStateStream", beam_job_api_pb2.GetJobStateRequest(job_id="nope-1")),
    ("GetMessageStream", beam_job_api_pb2.JobMessagesRequest(job_id="nope-1")),
    ("Run", beam_job_api_pb2.RunJobRequest(preparation_id="nope-1")),
    ("Drain", beam_job_api_pb2.DrainJobRequest(job_id="nope-1")),
])
def test_unknown_job_id_is_not_found(stub: object, method: str, request_: object) -> None:
    error = rpc_error(getattr(stub, method), request_)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope-1'" in error.details() and method in error.details()
    assert stub.GetJobs(beam_job_api_pb2.GetJobsRequest()) is not None  # type: ignore[attr-defined]


def test_prepare_without_pipeline_is_invalid(stub: object) -> None:
    error = rpc_error(stub.Prepare, beam_job_api_pb2.PrepareJobRequest(job_name="empty"))  # type: ignore[attr-defined]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Prepare" in error.details() and "no pipeline" in error.details()


def test_malformed_pipeline_is_invalid(stub: object) -> None:
    proto = pipeline_proto()
    leaf = next(t for t in proto.components.transforms.values() if t.inputs)
    leaf.inputs["in"] = "ghost-pcollection"
    with pytest.raises(grpc.RpcError) as info:
        prepare(stub, "broken", pipeline=proto)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ghost-pcollection" in info.value.details()
    assert "broken" in info.value.details()


def test_bad_gpu_option_is_invalid(stub: object) -> None:
    with pytest.raises(grpc.RpcError) as info:
        prepare(stub, "badopt", worker_start_timeout="-3")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "worker_start_timeout" in info.value.details() and "-3" in info.value.details()


def test_run_twice_is_refused(stub: object, executor: ControlledExecutor) -> None:
    job_id = prepare(stub, "twice").preparation_id
    run(stub, job_id)
    error = rpc_error(stub.Run, beam_job_api_pb2.RunJobRequest(preparation_id=job_id))  # type: ignore[attr-defined]
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert job_id in error.details() and "already" in error.details()
    executor.result("twice").finish()
    assert final_state(stub, job_id) == JobState.DONE  # type: ignore[arg-type]


def test_cancel_of_finished_job_names_state(stub: object, executor: ControlledExecutor) -> None:
    job_id = prepare(stub, "done").preparation_id
    run(stub, job_id)
    executor.result("done").finish()
    assert final_state(stub, job_id) == JobState.DONE  # type: ignore[arg-type]
    error = rpc_error(stub.Cancel, beam_job_api_pb2.CancelJobRequest(job_id=job_id))  # type: ignore[attr-defined]
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "DONE" in error.details() and job_id in error.details()


def drain(stub: object, job_id: str) -> int:
    response = stub.Drain(beam_job_api_pb2.DrainJobRequest(job_id=job_id))  # type: ignore[attr-defined]
    state: int = response.state
    return state


def test_drain_over_the_api(stub: object, executor: ControlledExecutor) -> None:
    job_id = prepare(stub, "drains").preparation_id
    run(stub, job_id)
    result = executor.result("drains")
    for event in stub.GetStateStream(  # type: ignore[attr-defined]
            beam_job_api_pb2.GetJobStateRequest(job_id=job_id)):
        if event.state == JobState.RUNNING:
            break
    assert drain(stub, job_id) == JobState.DRAINING
    assert result.drain_calls == 1
    result.finish(drained=True)
    assert final_state(stub, job_id) == JobState.DRAINED  # type: ignore[arg-type]
    metrics = stub.GetJobMetrics(beam_job_api_pb2.GetJobMetricsRequest(job_id=job_id))  # type: ignore[attr-defined]
    assert len(metrics.metrics.committed) == 1   # final, as for DONE


def test_drain_refusals_say_why_and_what_to_do(stub: object,
                                               executor: ControlledExecutor) -> None:
    prepared = prepare(stub, "prepared").preparation_id
    error = rpc_error(stub.Drain, beam_job_api_pb2.DrainJobRequest(job_id=prepared))  # type: ignore[attr-defined]
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert prepared in error.details() and "never run" in error.details()
    assert "Run it first" in error.details()

    done = prepare(stub, "finished").preparation_id
    run(stub, done)
    executor.result("finished").finish()
    assert final_state(stub, done) == JobState.DONE  # type: ignore[arg-type]
    error = rpc_error(stub.Drain, beam_job_api_pb2.DrainJobRequest(job_id=done))  # type: ignore[attr-defined]
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert done in error.details() and "already ended in state DONE" in error.details()
    assert "nothing left to drain" in error.details()

    other = prepare(stub, "undrainable").preparation_id
    run(stub, other)
    result = executor.result("undrainable")
    for event in stub.GetStateStream(  # type: ignore[attr-defined]
            beam_job_api_pb2.GetJobStateRequest(job_id=other)):
        if event.state == JobState.RUNNING:
            break
    error = rpc_error(stub.Drain, beam_job_api_pb2.DrainJobRequest(job_id=other))  # type: ignore[attr-defined]
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert other in error.details() and "Cancel stops it instead" in error.details()
    result.finish()
    assert final_state(stub, other) == JobState.DONE  # type: ignore[arg-type]


def test_drain_command(stub: object, server: JobServer, executor: ControlledExecutor,
                       capsys: pytest.CaptureFixture[str]) -> None:
    job_id = prepare(stub, "by-cli").preparation_id
    run(stub, job_id)
    result = executor.result("by-cli")
    for event in stub.GetStateStream(  # type: ignore[attr-defined]
            beam_job_api_pb2.GetJobStateRequest(job_id=job_id)):
        if event.state == JobState.RUNNING:
            break
    codes: list[int] = []
    waiter = threading.Thread(target=lambda: codes.append(
        drain_main([job_id, "--job_endpoint", server.endpoint])))
    waiter.start()
    deadline = time.monotonic() + 60
    while result.drain_calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    result.finish(drained=True)
    waiter.join(60)
    assert codes == [0]
    assert capsys.readouterr().out == "job %s: DRAINING\njob %s: DRAINED\n" % (job_id, job_id)
    # The job ended: a second drain is refused, naming the job and its state.
    assert drain_main([job_id, "--job_endpoint", server.endpoint, "--no_wait"]) == 1
    err = capsys.readouterr().err
    assert job_id in err and "already ended in state DRAINED" in err
    assert drain_main(["nope-2", "--job_endpoint", server.endpoint]) == 1
    assert "no job with id 'nope-2'" in capsys.readouterr().err


def test_drain_command_without_a_server_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from beam_gpu_runner.cli import SUBCOMMANDS
    assert SUBCOMMANDS["drain"][0] == "beam_gpu_runner.jobservice.client:drain_main"
    endpoint = "localhost:%d" % pick_free_port()
    assert drain_main(["some-job", "--job_endpoint", endpoint]) == 1
    err = capsys.readouterr().err
    assert "no job server answers at %s" % endpoint in err


def test_jobs_command_lists_ids_names_and_states(stub: object, server: JobServer,
                                                 executor: ControlledExecutor,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from beam_gpu_runner.cli import SUBCOMMANDS
    assert SUBCOMMANDS["jobs"][0] == "beam_gpu_runner.jobservice.client:jobs_main"
    assert jobs_main(["--job_endpoint", server.endpoint]) == 0
    assert capsys.readouterr().out == "no jobs on %s\n" % server.endpoint
    first = prepare(stub, "wordcount").preparation_id
    run(stub, first)
    executor.result("wordcount").finish()
    assert final_state(stub, first) == JobState.DONE  # type: ignore[arg-type]
    second = prepare(stub, "a-much-longer-name").preparation_id
    assert jobs_main(["--job_endpoint", server.endpoint]) == 0
    lines = capsys.readouterr().out.splitlines()
    width = len(second)
    assert lines == [
        "%-*s  %-*s  STATE" % (width, "JOB ID", len("a-much-longer-name"), "NAME"),
        "%-*s  %-*s  DONE" % (width, first, len("a-much-longer-name"), "wordcount"),
        "%s  a-much-longer-name  STOPPED" % second]


def test_jobs_command_without_a_server_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = "localhost:%d" % pick_free_port()
    assert jobs_main(["--job_endpoint", endpoint]) == 1
    err = capsys.readouterr().err
    assert "beam-gpu-runner jobs: no job server answers at %s" % endpoint in err


def test_cancel_prepared_job_then_run_is_refused(stub: object) -> None:
    job_id = prepare(stub, "never").preparation_id
    response = stub.Cancel(beam_job_api_pb2.CancelJobRequest(job_id=job_id))  # type: ignore[attr-defined]
    assert response.state == JobState.CANCELLED
    error = rpc_error(stub.Run, beam_job_api_pb2.RunJobRequest(preparation_id=job_id))  # type: ignore[attr-defined]
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CANCELLED" in error.details()


# -- command line ------------------------------------------------------------

def test_main_rejects_unloadable_executor(capsys: pytest.CaptureFixture[str]) -> None:
    assert job_server_main(["--port", "0", "--executor", "no.such.module:Thing"]) == 2
    assert "no.such.module:Thing" in capsys.readouterr().err


def test_main_rejects_malformed_external_resource(capsys: pytest.CaptureFixture[str]) -> None:
    assert job_server_main(["--port", "0", "--external_resource", "gpu"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_main_refuses_to_bind_beyond_loopback_without_allow_from_or_insecure(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert job_server_main(["--port", "0", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--allow_from=CIDR" in err and "--insecure" in err and "0.0.0.0" in err
    assert job_server_main(["--port", "0", "--ui_port", "0", "--ui_host", "0.0.0.0"]) == 2
    assert "web UI" in capsys.readouterr().err
    assert job_server_main(["--port", "0", "--allow_from", "10.0.0.0/33"]) == 2
    assert "--allow_from=10.0.0.0/33" in capsys.readouterr().err


def test_fake_gpus_reach_every_job_and_a_job_may_override_them() -> None:
    from beam_gpu_runner.jobservice.job_options import job_pipeline_options
    from beam_gpu_runner.jobservice.main import build_parser, fake_gpu_keys
    from beam_gpu_runner.resources.config import ExternalResourceConfig
    assert build_parser().parse_args(["--fake_gpus", "3"]).fake_gpus == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--fake_gpus", "0"])
    defaults = ServerJobDefaults(external_resources=fake_gpu_keys(3))
    spec = ExternalResourceConfig.from_options(
        job_pipeline_options(job_utils.dict_to_struct({}), defaults)).get("gpu")
    assert spec is not None
    assert (spec.driver_factory, spec.params) == ("testing", {"num-devices": "3"})
    own = job_utils.dict_to_struct({"beam:option:external_resource:v1": [
        "external-resource.gpu.param.num-devices=1"]})
    spec = ExternalResourceConfig.from_options(
        job_pipeline_options(own, defaults)).get("gpu")
    assert spec is not None and spec.params == {"num-devices": "1"}


def test_a_job_cannot_open_the_servers_ui_or_widen_its_access(
        stub: object, executor: ControlledExecutor) -> None:
    job_id = prepare(stub, "sneaky", ui_port="8080", ui_host="0.0.0.0", insecure=True,
                     allow_from=["0.0.0.0/0"]).preparation_id
    run(stub, job_id)
    gpu = executor.options["sneaky"].view_as(GpuRunnerOptions)
    assert (gpu.ui_port, gpu.ui_host, gpu.insecure, gpu.allow_from) == (
        None, "127.0.0.1", False, None)
    executor.result("sneaky").finish()
    assert final_state(stub, job_id) == JobState.DONE  # type: ignore[arg-type]


def test_job_options_pickle_errors() -> None:
    import pickle

    from beam_gpu_runner.jobservice.executor import ExecutorLoadError
    from beam_gpu_runner.jobservice.job_options import JobOptionsError
    for error in (JobOptionsError("k", "v", "why"), ExecutorLoadError("m:f", "why")):
        assert str(pickle.loads(pickle.dumps(error))) == str(error)
