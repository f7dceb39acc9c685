"""End to end on GpuRunner with (testing-driver) GPUs: the job server in one
process with two fake devices, PortableRunner clients in this one.

Hinted stages must run on the server's own GPU workers whatever environment
the client asked for (LOOPBACK, EXTERNAL, PROCESS), see the files the client
staged, share the devices between jobs through leases, and leave no worker
processes behind when cancelled.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import apache_beam as beam
import psutil
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.periodicsequence import PeriodicImpulse

from .helpers import (
    STARTUP_LIMIT_S, TEST_EXECUTOR, ServerProcess, final_state, job_stub, pick_free_port,
    start_server_process)
from .slow_pipeline import ReportWorker, read_reports
from .wheels import make_wheel

pytestmark = pytest.mark.slow

JobState = beam_job_api_pb2.JobState
_TESTS_ROOT = str(Path(__file__).resolve().parent.parent)
GPU_FLAGS = ["--external_resource", "external-resource.gpu.driver-factory.class=testing",
             "--external_resource", "external-resource.gpu.param.num-devices=2"]
ONE_GPU = "type:nvidia;count:1"
#: these tests check where unhinted stages run: not chained onto the GPU worker
KEEP_APART = "--accelerator_chaining=off"


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    leases = tmp_path_factory.mktemp("leases")   # this server's devices only
    staging = tmp_path_factory.mktemp("staging")
    srv = start_server_process(
        TEST_EXECUTOR, [*GPU_FLAGS, "--staging_dir", str(staging)],
        pythonpath=[_TESTS_ROOT], env_vars={"BEAM_GPU_RUNNER_LEASE_DIR": str(leases)})
    srv.staging_dir = staging  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0


def options(endpoint: str, *flags: str, environment: str = "LOOPBACK") -> PipelineOptions:
    # One worker per pool: a pool prestarts (and leases devices for) each slot.
    return PipelineOptions(["--runner=PortableRunner", "--job_endpoint=%s" % endpoint,
                            "--environment_type=%s" % environment, "--num_workers=1",
                            *flags])


def wait_for_reports(out: Path, tag: str, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while True:
        reports = read_reports(str(out), tag)
        if len(reports) >= count:
            return reports
        if time.monotonic() > deadline:
            raise AssertionError("%d report(s) %r never appeared in %s" % (count, tag, out))
        time.sleep(0.1)


def server_workers(srv: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(srv.proc.pid).children(recursive=True)


def job_state(srv: ServerProcess, job_id: str) -> int:
    state: int = job_stub(srv.endpoint).GetState(
        beam_job_api_pb2.GetJobStateRequest(job_id=job_id)).state
    return state


def test_hinted_stage_runs_on_a_server_gpu_worker_with_the_staged_files(
        gpu_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    wheel = make_wheel(tmp_path, "stagedpkg", "0.1", "VALUE = 'staged by the client'\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("psutil\n")   # installed on the server: used from there
    p = beam.Pipeline(options=options(
        gpu_server.endpoint, "--job_name=e2e-gpu", "--extra_package=%s" % wheel,
        "--requirements_file=%s" % requirements, "--requirements_cache=skip",
        "--save_main_session", KEEP_APART))
    _ = (p | beam.Create([1, 2, 3])
         | "OnClient" >> beam.ParDo(ReportWorker(str(out), "client"))
         | "OnGpu" >> beam.ParDo(ReportWorker(str(out), "gpu", ("stagedpkg",)))
         .with_resource_hints(accelerator=ONE_GPU))
    result = p.run()

    assert result.wait_until_finish() == "DONE"
    client, gpu = read_reports(str(out), "client"), read_reports(str(out), "gpu")
    assert len(client) == len(gpu) == 3
    assert {r["pid"] for r in client} == {psutil.Process().pid}   # LOOPBACK: here
    for r in gpu:
        assert r["pid"] != psutil.Process().pid
        assert r["ppid"] == gpu_server.proc.pid, "not a worker of the job server"
        assert len(r["gpus"]) == 1 and r["gpus"][0] in ("0", "1"), r
        assert r["modules"] == {"stagedpkg": "staged by the client"}
        assert r["main_session_staged"], r
    counters = result.metrics().query(
        MetricsFilter().with_name("reported").with_step("OnGpu"))["counters"]
    assert [c.committed for c in counters] == [3]
    # The job's staged files and installed packages go when it ends.
    job_dir = gpu_server.staging_dir / result._job_id  # type: ignore[attr-defined]
    assert all(r["semi_persistent_dir"].startswith(str(job_dir) + "/") for r in gpu), gpu
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while job_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not job_dir.exists()


def start_worker_pool(use_process: bool = False, path_first: Optional[str] = None
                      ) -> tuple["subprocess.Popen[bytes]", int]:
    """Beam's external worker pool: workers are threads of that process, or
    with ``use_process`` processes it starts with ``python`` from its PATH."""
    port = pick_free_port()
    env = {**os.environ, "PYTHONPATH": _TESTS_ROOT}
    if path_first:
        env["PATH"] = os.pathsep.join([path_first, env.get("PATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "from apache_beam.runners.worker.worker_pool_main import "
         "BeamFnExternalWorkerPoolServicer as Pool; "
         "Pool.start(port=%d, use_process=%s)[1].wait_for_termination()"
         % (port, use_process)], env=env)
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while True:
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("worker pool did not start on port %d" % port)
            time.sleep(0.1)


def test_by_default_an_unhinted_neighbour_is_chained_onto_the_gpu_worker(
        gpu_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    p = beam.Pipeline(options=options(gpu_server.endpoint, "--job_name=e2e-chained"))
    _ = (p | beam.Create([1])
         | "Plain" >> beam.ParDo(ReportWorker(str(out), "plain"))
         | "OnGpu" >> beam.ParDo(ReportWorker(str(out), "gpu"))
         .with_resource_hints(accelerator=ONE_GPU))
    assert p.run().wait_until_finish() == "DONE"
    [plain], [gpu] = read_reports(str(out), "plain"), read_reports(str(out), "gpu")
    assert plain["pid"] == gpu["pid"] != psutil.Process().pid   # one GPU worker
    assert len(plain["gpus"]) == 1


@pytest.mark.parametrize("environment", ["EXTERNAL", "PROCESS", "DOCKER"])
def test_environments_and_hinted_stages(gpu_server: ServerProcess, tmp_path: Path,
                                        environment: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pool = None
    if environment == "EXTERNAL":
        pool, port = start_worker_pool()
        config = "localhost:%d" % port
        expected_pid = pool.pid        # unhinted stages: the client's pool
    elif environment == "PROCESS":
        # Our factory runs its own harness for a PROCESS environment; the
        # command (normally a container's boot program) is not run.
        config = json.dumps({"command": "/nonexistent/boot"})
        expected_pid = None
    else:   # nor is a DOCKER environment's image (PortableRunner's default)
        config = "apache/beam_python3.11_sdk:does-not-exist"
        expected_pid = None
    try:
        p = beam.Pipeline(options=options(
            gpu_server.endpoint, "--environment_config=%s" % config,
            "--job_name=e2e-%s" % environment.lower(), KEEP_APART,
            environment=environment))
        _ = (p | beam.Create([1])
             | "Plain" >> beam.ParDo(ReportWorker(str(out), "plain"))
             | "OnGpu" >> beam.ParDo(ReportWorker(str(out), "gpu"))
             .with_resource_hints(accelerator=ONE_GPU))
        assert p.run().wait_until_finish() == "DONE"
    finally:
        if pool is not None:
            pool.kill()
            pool.wait()
    [plain], [gpu] = read_reports(str(out), "plain"), read_reports(str(out), "gpu")
    if expected_pid is not None:
        assert plain["pid"] == expected_pid
    else:
        assert plain["ppid"] == gpu_server.proc.pid and plain["gpus"] == []
    assert gpu["ppid"] == gpu_server.proc.pid and len(gpu["gpus"]) == 1


def start_held_job(srv: ServerProcess, out: Path, tag: str, hint: str,
                   *flags: str) -> PipelineResult:
    p = beam.Pipeline(options=options(srv.endpoint, "--job_name=e2e-%s" % tag, *flags))
    _ = (p | beam.Impulse()
         | beam.ParDo(ReportWorker(str(out), tag, hold_path=str(out / "release")))
         .with_resource_hints(accelerator=hint))
    result: PipelineResult = p.run()
    return result


def test_two_jobs_share_the_devices_and_a_third_waits_for_them(
        gpu_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    try:
        first = start_held_job(gpu_server, out, "first", ONE_GPU)
        second = start_held_job(gpu_server, out, "second", ONE_GPU)
        [a], [b] = wait_for_reports(out, "first"), wait_for_reports(out, "second")
        assert sorted(a["gpus"] + b["gpus"]) == ["0", "1"], (a, b)   # one lease each

        # Both devices are leased: the third job waits for them (it does not fail).
        third = start_held_job(gpu_server, out, "third", "type:nvidia;count:2")
        assert read_reports(str(out), "third") == []
        assert job_state(gpu_server, first._job_id) == JobState.RUNNING  # type: ignore
        assert job_state(gpu_server, second._job_id) == JobState.RUNNING  # type: ignore
    finally:
        (out / "release").touch()
    assert first.wait_until_finish() == "DONE"
    assert second.wait_until_finish() == "DONE"
    assert third.wait_until_finish() == "DONE"
    [c] = wait_for_reports(out, "third")
    assert sorted(c["gpus"]) == ["0", "1"]


def test_a_job_that_waits_too_long_for_devices_fails_saying_so(
        gpu_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    try:
        first = start_held_job(gpu_server, out, "holder", "type:nvidia;count:2")
        wait_for_reports(out, "holder")
        late = start_held_job(gpu_server, out, "late", ONE_GPU, "--device_wait_timeout=1")
        with pytest.raises(Exception) as info:
            late.wait_until_finish()
        message = str(info.value)
        assert "2 are leased" in message and "--device_wait_timeout" in message, message
    finally:
        (out / "release").touch()
    assert first.wait_until_finish() == "DONE"


def test_cancel_of_a_streaming_job_leaves_no_workers(gpu_server: ServerProcess,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    start = time.time()
    p = beam.Pipeline(options=options(gpu_server.endpoint, "--streaming",
                                      "--job_name=e2e-streaming"))
    _ = (p | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + 3600,
                             fire_interval=0.2)
         | beam.ParDo(ReportWorker(str(out), "tick")).with_resource_hints(accelerator=ONE_GPU))
    result = p.run()
    wait_for_reports(out, "tick", count=2)
    job_id = result._job_id  # type: ignore[attr-defined]
    workers = server_workers(gpu_server)
    assert workers, "the hinted stage runs on no server worker"

    result.cancel()

    assert final_state(job_stub(gpu_server.endpoint), job_id) == JobState.CANCELLED
    _, alive = psutil.wait_procs(workers, timeout=STARTUP_LIMIT_S)
    assert alive == [], "processes left after cancel: %s" % alive
    assert server_workers(gpu_server) == []
    # Its lease went with it: both devices are free for the next job.
    check = beam.Pipeline(options=options(gpu_server.endpoint, "--job_name=e2e-after"))
    _ = (check | beam.Create([1])
         | beam.ParDo(ReportWorker(str(out), "both")).with_resource_hints(
             accelerator="type:nvidia;count:2"))
    assert check.run().wait_until_finish() == "DONE"
    assert sorted(read_reports(str(out), "both")[0]["gpus"]) == ["0", "1"]


def test_external_pool_whose_workers_never_connect_fails_the_job(
        gpu_server: ServerProcess, tmp_path: Path) -> None:
    # A process-based pool whose worker command ("python" on its PATH) exits at once.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").write_text("#!/bin/sh\nexit 3\n")
    (fake_bin / "python").chmod(0o755)
    pool, port = start_worker_pool(use_process=True, path_first=str(fake_bin))
    try:
        p = beam.Pipeline(options=options(
            gpu_server.endpoint, "--environment_config=localhost:%d" % port,
            "--worker_start_timeout=3", "--job_name=e2e-no-worker",
            environment="EXTERNAL"))
        _ = p | beam.Create([1]) | beam.Map(lambda x: x)
        with pytest.raises(Exception, match=r"client's worker pool at localhost:%d .* did "
                                            r"not connect .* within 3.0s" % port):
            p.run().wait_until_finish()
    finally:
        pool.kill()
        pool.wait()


def test_submit_mnist_example(gpu_server: ServerProcess, tmp_path: Path) -> None:
    """The example client, in a process of its own; its hinted classification
    stage runs on the server's (fake) GPUs."""
    out = subprocess.run(
        [sys.executable, "-m", "beam_gpu_runner.pipelines.submit_mnist",
         "--job_endpoint=%s" % gpu_server.endpoint, "--num_images=300", "--rate=0",
         "--output=%s" % (tmp_path / "predictions")],
        capture_output=True, text=True, timeout=STARTUP_LIMIT_S * 3)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Job state changed to DONE" in out.stderr
    assert "summary: 300 images" in out.stderr  # counters came back from the server
    assert any((tmp_path / "predictions").iterdir())
