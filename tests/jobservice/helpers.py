"""Shared helpers of the job server tests: executor selection, free ports,
job servers in subprocesses, Job API waits."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence

import grpc
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

# The executor the job server runs jobs with in these tests: GpuRunner, as in
# production. BEAM_GPU_RUNNER_TEST_EXECUTOR=module:factory picks another (e.g.
# beam_gpu_runner.jobservice.testing:FnApiRunnerExecutor, to tell a job-server
# bug from a runner bug).
TEST_EXECUTOR = os.environ.get(
    "BEAM_GPU_RUNNER_TEST_EXECUTOR", "beam_gpu_runner.jobservice.executor:GpuRunnerExecutor")

# Bounds for waits on other processes; tests never assert on durations.
STARTUP_LIMIT_S = 120.0


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def job_stub(endpoint: str) -> beam_job_api_pb2_grpc.JobServiceStub:
    return beam_job_api_pb2_grpc.JobServiceStub(grpc.insecure_channel(endpoint))


def wait_until_serving(endpoint: str, proc: Optional["subprocess.Popen[bytes]"] = None) -> None:
    """Block until a Job API server answers on ``endpoint``."""
    stub = job_stub(endpoint)
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("job server exited with code %s before serving on %s"
                               % (proc.returncode, endpoint))
        try:
            stub.GetState(beam_job_api_pb2.GetJobStateRequest(job_id="[probe]"), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return
        if time.monotonic() > deadline:
            raise RuntimeError("job server on %s not serving after %.0f s"
                               % (endpoint, STARTUP_LIMIT_S))
        time.sleep(0.1)


@dataclass
class ServerProcess:
    proc: "subprocess.Popen[bytes]"
    endpoint: str

    def stop(self) -> int:
        """SIGTERM, then wait for a clean exit; return the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=STARTUP_LIMIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def server_command(port: int, executor: str, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "beam_gpu_runner.jobservice.main",
            "--port", str(port), "--executor", executor, *extra]


def start_server_process(executor: str, extra: Sequence[str] = (),
                         pythonpath: Sequence[str] = (),
                         env_vars: Optional[Mapping[str, str]] = None) -> ServerProcess:
    """Start a job server; ``pythonpath`` folders become importable by its
    jobs' worker processes; ``env_vars`` are added to its environment."""
    port = pick_free_port()
    env = {**os.environ, **(env_vars or {})}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [*pythonpath, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    proc = subprocess.Popen(server_command(port, executor, extra), env=env)
    endpoint = "localhost:%d" % port
    try:
        wait_until_serving(endpoint, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return ServerProcess(proc, endpoint)


def final_state(stub: beam_job_api_pb2_grpc.JobServiceStub, job_id: str) -> int:
    """Follow GetStateStream to the job's terminal state."""
    last = beam_job_api_pb2.JobState.UNSPECIFIED
    events: Iterator[beam_job_api_pb2.JobStateEvent] = stub.GetStateStream(
        beam_job_api_pb2.GetJobStateRequest(job_id=job_id))
    for event in events:
        last = event.state
    return last
