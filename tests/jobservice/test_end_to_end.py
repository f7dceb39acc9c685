"""End to end: the job server in one process (``python -m
beam_gpu_runner.jobservice.main``, running jobs on GpuRunner), PortableRunner
clients in this one. GPU-hinted stages: test_end_to_end_gpu.py."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import apache_beam as beam
import psutil
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.runner import PipelineResult
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.window import FixedWindows

from .helpers import (
    STARTUP_LIMIT_S, TEST_EXECUTOR, ServerProcess, final_state,
    job_stub, start_server_process)
from .slow_pipeline import (
    BlockUntilReleased, CountAndDouble, WriteWindowIndexes, check_complete_windows,
    read_window_indexes)

pytestmark = pytest.mark.slow

JobState = beam_job_api_pb2.JobState
_TESTS_ROOT = str(Path(__file__).resolve().parent.parent)
_SUBPROCESS_WORKER = "%s -m apache_beam.runners.worker.sdk_worker_main" % sys.executable


def client_options(endpoint: str, environment: str = "LOOPBACK", **extra: str) -> PipelineOptions:
    flags = ["--runner=PortableRunner", "--job_endpoint=%s" % endpoint,
             "--environment_type=%s" % environment]
    if environment == python_urns.SUBPROCESS_SDK:
        flags.append("--environment_config=%s" % _SUBPROCESS_WORKER)
    flags += ["--%s=%s" % kv for kv in extra.items()]
    return PipelineOptions(flags)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = start_server_process(TEST_EXECUTOR, pythonpath=[_TESTS_ROOT])
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def cancellable_server() -> Iterator[ServerProcess]:
    srv = start_server_process(TEST_EXECUTOR, pythonpath=[_TESTS_ROOT])
    yield srv
    srv.stop()


def wait_for_file(path: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError("%s: %s never appeared" % (what, path))
        time.sleep(0.1)


def only_job_id(endpoint: str) -> str:
    jobs = job_stub(endpoint).GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info
    running = [j.job_id for j in jobs if j.state in (JobState.STARTING, JobState.RUNNING)]
    assert len(running) == 1, jobs
    job_id: str = running[0]
    return job_id


def test_small_pipeline_done_with_metrics(server: ServerProcess) -> None:
    p = beam.Pipeline(options=client_options(server.endpoint, job_name="e2e-small"))
    doubled = p | beam.Create([1, 2, 3, 4]) | beam.ParDo(CountAndDouble())
    assert_that(doubled, equal_to([2, 4, 6, 8]))
    result = p.run()
    assert result.wait_until_finish() == "DONE"
    counters = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
    assert [c.committed for c in counters] == [4]


def test_failing_job_does_not_disturb_the_next(server: ServerProcess) -> None:
    def explode(x: int) -> int:
        raise ValueError("bad element %d" % x)

    p = beam.Pipeline(options=client_options(server.endpoint, job_name="e2e-fails"))
    _ = p | beam.Create([1]) | beam.Map(explode)
    with pytest.raises(Exception, match="bad element 1"):
        p.run().wait_until_finish()
    p = beam.Pipeline(options=client_options(server.endpoint, job_name="e2e-after"))
    assert_that(p | beam.Create([5]) | beam.ParDo(CountAndDouble()), equal_to([10]))
    assert p.run().wait_until_finish() == "DONE"


def start_blocking_job(endpoint: str, tmp_path: Path, environment: str) -> PipelineResult:
    p = beam.Pipeline(options=client_options(endpoint, environment, job_name="e2e-blocks"))
    _ = (p | beam.Impulse()
         | beam.ParDo(BlockUntilReleased(str(tmp_path / "started"), str(tmp_path / "release"))))
    result: PipelineResult = p.run()
    wait_for_file(tmp_path / "started", "the blocking DoFn")
    return result


# Workers in this process (LOOPBACK) see their job's connection close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("environment", ["LOOPBACK", python_urns.SUBPROCESS_SDK])
def test_cancel_ends_job_and_its_processes(cancellable_server: ServerProcess, tmp_path: Path,
                                           environment: str) -> None:
    result = start_blocking_job(cancellable_server.endpoint, tmp_path, environment)
    job_id = only_job_id(cancellable_server.endpoint)
    workers = psutil.Process(cancellable_server.proc.pid).children(recursive=True)
    try:
        result.cancel()
        assert final_state(job_stub(cancellable_server.endpoint), job_id) == JobState.CANCELLED
        _, alive = psutil.wait_procs(workers, timeout=STARTUP_LIMIT_S)
        assert alive == [], "processes left after cancel: %s" % alive
        assert psutil.Process(cancellable_server.proc.pid).children(recursive=True) == []
    finally:
        (tmp_path / "release").touch()  # frees a LOOPBACK DoFn in this process


def test_sigterm_cancels_running_jobs(tmp_path: Path) -> None:
    srv = start_server_process(TEST_EXECUTOR, pythonpath=[_TESTS_ROOT])
    try:
        start_blocking_job(srv.endpoint, tmp_path, python_urns.SUBPROCESS_SDK)
        workers = psutil.Process(srv.proc.pid).children(recursive=True)
        assert workers, "the job started no processes"
        assert srv.stop() == 0
        _, alive = psutil.wait_procs(workers, timeout=STARTUP_LIMIT_S)
        assert alive == [], "processes left after SIGTERM: %s" % alive
    finally:
        (tmp_path / "release").touch()
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_drain_over_the_job_api_ends_drained_with_every_window(
        cancellable_server: ServerProcess, tmp_path: Path) -> None:
    """A streaming job (PeriodicImpulse due to run for an hour, 1 s windows) on
    the server's own workers, drained through the Job API once a window fired."""
    endpoint = cancellable_server.endpoint
    folder = tmp_path / "windows"
    folder.mkdir()
    interval = 0.1
    start = time.time()
    options = client_options(endpoint, python_urns.SUBPROCESS_SDK, job_name="e2e-drain")
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    _ = (p
         | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + 3600,
                           fire_interval=interval)
         | beam.WindowInto(FixedWindows(1))
         | beam.Map(lambda t: ("stamps", t))
         | beam.GroupByKey()
         | beam.ParDo(WriteWindowIndexes(str(folder), start, interval)))
    result = p.run()
    stub = job_stub(endpoint)
    try:
        job_id = only_job_id(endpoint)
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while not read_window_indexes(str(folder)):
            assert time.monotonic() < deadline, "no window fired"
            time.sleep(0.1)
        workers = psutil.Process(cancellable_server.proc.pid).children(recursive=True)
        response = stub.Drain(beam_job_api_pb2.DrainJobRequest(job_id=job_id))
        assert response.state == JobState.DRAINING
        assert final_state(stub, job_id) == JobState.DRAINED
    finally:
        if result.state not in ("DRAINED", "DONE", "FAILED", "CANCELLED"):
            result.cancel()
    # Beam's PortableRunner client treats every end but DONE as a failure.
    with pytest.raises(RuntimeError, match="DRAINED"):
        result.wait_until_finish()
    check_complete_windows(read_window_indexes(str(folder)), start, interval)
    _, alive = psutil.wait_procs(workers, timeout=STARTUP_LIMIT_S)
    assert alive == [], "processes left after the drain: %s" % alive


# The job server with Beam's FnApiRunner instead of GpuRunner: this tests the
# server's --executor seam (any executor runs jobs, reports states and metrics),
# and keeps these executors, which tell a job-server bug from a runner bug
# (BEAM_GPU_RUNNER_TEST_EXECUTOR), working.
@pytest.mark.parametrize("executor", [
    "beam_gpu_runner.jobservice.testing:FnApiRunnerExecutor",
    "beam_gpu_runner.jobservice.testing:SubprocessFnApiRunnerExecutor"])
def test_server_runs_jobs_on_another_executor(executor: str) -> None:
    srv = start_server_process(executor, pythonpath=[_TESTS_ROOT])
    try:
        p = beam.Pipeline(options=client_options(srv.endpoint, job_name="e2e-fn-api"))
        assert_that(p | beam.Create([1, 2]) | beam.ParDo(CountAndDouble()), equal_to([2, 4]))
        result = p.run()
        assert result.wait_until_finish() == "DONE"
        counters = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
        assert [c.committed for c in counters] == [2]
    finally:
        assert srv.stop() == 0


def test_submit_mnist_argv() -> None:
    from beam_gpu_runner.pipelines.submit_mnist import portable_argv
    assert portable_argv(["--job_endpoint=h:1", "--rate=0"]) == [
        "--runner=PortableRunner", "--job_endpoint=h:1", "--environment_type=LOOPBACK",
        "--rate=0"]
    with pytest.raises(SystemExit, match="--runner"):
        portable_argv(["--runner=DirectRunner"])
