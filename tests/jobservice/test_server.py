"""The job server's start: a taken port fails at once, the web UI, and who may
connect (the allow-list on every RPC, ``--insecure``)."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

import grpc
import pytest
from apache_beam.portability.api import (
    beam_artifact_api_pb2, beam_artifact_api_pb2_grpc, beam_job_api_pb2)

from beam_gpu_runner.jobservice.server import JobServer, JobServerError
from beam_gpu_runner.ui.access import AccessConfigError

from .fakes import ControlledExecutor
from .helpers import STARTUP_LIMIT_S, job_stub, pick_free_port, server_command

JobState = beam_job_api_pb2.JobState


def test_a_taken_port_fails_the_second_server_at_once() -> None:
    with JobServer(ControlledExecutor(), "127.0.0.1", 0) as first:
        assert first.port is not None
        second = JobServer(ControlledExecutor(), "127.0.0.1", first.port)
        with pytest.raises(JobServerError) as info:
            second.start()
        text = str(info.value)
        assert "port %d is already in use" % first.port in text and "--port" in text
        # the first still serves, alone
        assert job_stub(first.endpoint).GetJobs(beam_job_api_pb2.GetJobsRequest()) \
            .job_info == []


def test_a_port_taken_by_another_program_fails_too() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        with pytest.raises(JobServerError, match="port %d is already in use" % port):
            JobServer(ControlledExecutor(), "127.0.0.1", port).start()


def test_the_web_ui_lists_the_servers_jobs() -> None:
    with JobServer(ControlledExecutor(), "127.0.0.1", 0, ui_port=0) as srv:
        assert srv.ui_url is not None and srv.ui_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(srv.ui_url + "api/jobs", timeout=30) as resp:
            assert resp.status == 200
    assert srv.ui is None


def test_a_taken_ui_port_fails_the_start_and_frees_the_job_api_port() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        ui_port = other.getsockname()[1]
        port = pick_free_port()
        with pytest.raises(JobServerError) as info:
            JobServer(ControlledExecutor(), "127.0.0.1", port, ui_port=ui_port).start()
        assert "--ui_port" in str(info.value)
    with JobServer(ControlledExecutor(), "127.0.0.1", port) as srv:
        assert srv.port == port


def test_beyond_loopback_needs_allow_from_or_insecure(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    with pytest.raises(AccessConfigError, match="--allow_from"):
        JobServer(ControlledExecutor(), "0.0.0.0", 0).start()
    with caplog.at_level(logging.WARNING):
        with JobServer(ControlledExecutor(), "0.0.0.0", 0, insecure=True) as srv:
            stub = job_stub("127.0.0.1:%d" % srv.port)
            assert stub.GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info == []
    assert any("--insecure" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


# -- the allow-list on every RPC, from two different client addresses --------
#
# gRPC's Python client cannot pick its source address. On one host, a
# dual-stack server ([::]) sees a client of 127.0.0.1 as ::ffff:127.0.0.1 (an
# IPv4 peer) and one of [::1] as ::1: two addresses, one inside the list and one
# outside. The slow test below does the same across a network namespace.

def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def v6_only_server(caplog: pytest.LogCaptureFixture) -> Iterator[JobServer]:
    if not _ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback (::1) to connect from")
    srv = JobServer(ControlledExecutor(), "::", 0, allow_from=["::1/128"])
    srv.start()
    yield srv
    srv.stop()


def test_calls_from_outside_the_list_are_refused_inside_accepted(
        v6_only_server: JobServer, caplog: pytest.LogCaptureFixture) -> None:
    port = v6_only_server.port
    inside = job_stub("[::1]:%d" % port)
    outside = job_stub("127.0.0.1:%d" % port)
    assert inside.GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info == []
    with caplog.at_level(logging.WARNING):
        # unary-unary, unary-stream and the artifact service's stream-stream
        with pytest.raises(grpc.RpcError) as info:
            outside.GetJobs(beam_job_api_pb2.GetJobsRequest())
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "127.0.0.1" in info.value.details()
        assert "--allow_from" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            list(outside.GetStateStream(beam_job_api_pb2.GetJobStateRequest(job_id="x")))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        artifacts = beam_artifact_api_pb2_grpc.ArtifactStagingServiceStub(
            grpc.insecure_channel("127.0.0.1:%d" % port))
        with pytest.raises(grpc.RpcError) as info:
            list(artifacts.ReverseArtifactRetrievalService(
                iter([beam_artifact_api_pb2.ArtifactResponseWrapper(staging_token="t")])))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 3
    assert all("127.0.0.1" in m and "::1/128" in m for m in refused), refused
    assert "GetJobs" in refused[0]
    # the allowed client is still fine (inside stays inside)
    with pytest.raises(grpc.RpcError) as info:
        list(inside.GetStateStream(beam_job_api_pb2.GetJobStateRequest(job_id="x")))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- as separate processes ---------------------------------------------------

@pytest.mark.slow
def test_a_second_job_server_process_on_a_taken_port_exits_at_once() -> None:
    port = pick_free_port()
    executor = "beam_gpu_runner.jobservice.testing:FnApiRunnerExecutor"
    first = subprocess.Popen(server_command(port, executor), stderr=subprocess.PIPE)
    try:
        from .helpers import wait_until_serving
        wait_until_serving("localhost:%d" % port, first)
        second = subprocess.run(server_command(port, executor), capture_output=True,
                                text=True, timeout=STARTUP_LIMIT_S)
        assert second.returncode == 1
        assert "port %d is already in use" % port in second.stderr
        assert "listening" not in second.stderr
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(timeout=STARTUP_LIMIT_S)


def wait_for_line(stream: "subprocess.IO[str]", needle: str) -> str:  # type: ignore[name-defined]
    deadline = time.monotonic() + STARTUP_LIMIT_S
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError("%r never logged; got:\n%s" % (needle, "".join(seen)))


@pytest.mark.slow
def test_the_job_server_logs_its_ui_url_and_fake_gpus() -> None:
    port = pick_free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "beam_gpu_runner.jobservice.main", "--port", str(port),
         "--ui_port", "0", "--fake_gpus", "2"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        wait_for_line(proc.stderr, "listening")
        url = wait_for_line(proc.stderr, "Web UI at ").split("Web UI at ")[1].split()[0]
        fake = wait_for_line(proc.stderr, "fake GPU")
        assert "2 fake GPU(s) from the testing driver (--fake_gpus 2)" in fake
        with urllib.request.urlopen(url + "api/devices", timeout=30) as resp:
            import json
            devices = json.load(resp)["devices"]
        assert [(d["index"], d["fake"]) for d in devices] == [("0", True), ("1", True)]
    finally:
        proc.terminate()
        assert proc.wait(timeout=STARTUP_LIMIT_S) == 0


# -- from another host: a network namespace with a veth pair -----------------

_CLIENT = """
import sys, urllib.error, urllib.request
from beam_gpu_runner.jobservice.client import jobs_main
code = jobs_main(["--job_endpoint", sys.argv[1]])
try:
    status = urllib.request.urlopen(sys.argv[2], timeout=60).status
except urllib.error.HTTPError as exc:
    status = exc.code
print("RESULT", code, status)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def other_host() -> Iterator[tuple[str, str, str]]:
    """A network namespace at 10.213.N.2 reaching this one at 10.213.N.1:
    yields (namespace, its address, our address)."""
    import os
    n = os.getpid() % 250 + 1
    ns, ours, theirs = "bgr-ui-%d" % os.getpid(), "vbgr%da" % n, "vbgr%db" % n
    try:
        _ip("netns", "add", ns)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip("cannot create a network namespace here (root and iproute2 "
                    "needed): %s" % getattr(exc, "stderr", exc))
    try:
        _ip("link", "add", ours, "type", "veth", "peer", "name", theirs)
        _ip("link", "set", theirs, "netns", ns)
        _ip("addr", "add", "10.213.%d.1/30" % n, "dev", ours)
        _ip("link", "set", ours, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", "10.213.%d.2/30" % n, "dev", theirs)
        _ip("netns", "exec", ns, "ip", "link", "set", theirs, "up")
        yield ns, "10.213.%d.2" % n, "10.213.%d.1" % n
    finally:
        subprocess.run(["ip", "link", "del", ours], capture_output=True, timeout=60)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)


@pytest.mark.slow
def test_an_allowed_host_is_served_and_another_refused_on_both_servers(
        other_host: tuple[str, str, str], caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    ns, client, server_ip = other_host
    with JobServer(ControlledExecutor(), "0.0.0.0", 0, allow_from=["%s/32" % client],
                   ui_port=0, ui_host="0.0.0.0") as srv:
        assert srv.ui is not None
        endpoint = "%s:%d" % (server_ip, srv.port)
        ui_url = "http://%s:%d/api/jobs" % (server_ip, srv.ui.port)
        inside = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _CLIENT, endpoint, ui_url],
            capture_output=True, text=True, timeout=STARTUP_LIMIT_S)
        assert "RESULT 0 200" in inside.stdout, inside.stdout + inside.stderr
        assert "no jobs on %s" % endpoint in inside.stdout
        # From this namespace the server sees our own address, not in the list.
        from beam_gpu_runner.jobservice.client import jobs_main
        with caplog.at_level(logging.WARNING):
            assert jobs_main(["--job_endpoint", endpoint]) == 1
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(ui_url, timeout=60)
        assert info.value.code == 403
        err = capsys.readouterr().err
        assert "not in the server's --allow_from" in err and server_ip in err
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert any("job server" in m and server_ip in m for m in refused), refused
        assert any("web UI" in m and server_ip in m for m in refused), refused
