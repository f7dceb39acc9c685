"""The job server's StatusSource (jobservice/watch.py): what its web UI shows."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from apache_beam.portability.api import beam_job_api_pb2

from beam_gpu_runner.jobservice.job_options import ServerJobDefaults
from beam_gpu_runner.jobservice.server import JobServer
from beam_gpu_runner.jobservice.watch import JobServerStatus
from beam_gpu_runner.resources.config import load_config
from beam_gpu_runner.resources.leases import Candidate, LeaseTable
from beam_gpu_runner.ui.devices import LocalDevices

from ui.fakes import XSS_LABEL, TickingExecutor
from .fakes import ControlledExecutor, RefusingExecutor
from .helpers import final_state, job_stub
from .test_service import prepare, run

JobState = beam_job_api_pb2.JobState


@pytest.fixture
def ticking() -> TickingExecutor:
    return TickingExecutor()


@pytest.fixture
def server(ticking: TickingExecutor) -> Iterator[JobServer]:
    with JobServer(ticking, "127.0.0.1", 0) as srv:
        yield srv


def test_a_job_with_status_shows_the_runners_view_under_the_servers_id(
        server: JobServer, ticking: TickingExecutor) -> None:
    stub = job_stub(server.endpoint)
    job_id = prepare(stub, "tick", streaming=True).preparation_id
    run(stub, job_id)
    result = ticking.result("tick")
    source = JobServerStatus(server.service)
    for event in stub.GetStateStream(beam_job_api_pb2.GetJobStateRequest(job_id=job_id)):
        if event.state == JobState.RUNNING:
            break
    first = source.job_statuses()[0]
    second = source.job_statuses()[0]
    assert (first.job_id, first.name, first.state) == (job_id, "tick", "RUNNING")
    assert [s.label for s in first.stages][1] == XSS_LABEL
    assert second.stages[0].elements_in > first.stages[0].elements_in
    assert first.edges == (("s1", "s2"), ("s2", "s3"))
    result.finish()
    assert final_state(stub, job_id) == JobState.DONE
    done = source.job_statuses()[0]
    assert done.state == "DONE" and done.end_time is not None
    assert done.end_time >= done.start_time


def test_a_job_without_status_shows_what_the_server_knows() -> None:
    executor = ControlledExecutor()
    with JobServer(executor, "127.0.0.1", 0) as srv:
        stub = job_stub(srv.endpoint)
        prepared = prepare(stub, "only-prepared", num_workers=3).preparation_id
        running = prepare(stub, "plain", streaming=True).preparation_id
        run(stub, running)
        executor.result("plain")
        by_id = {j.job_id: j for j in JobServerStatus(srv.service).job_statuses()}
        stopped = by_id[prepared]
        assert (stopped.name, stopped.state, stopped.end_time) == (
            "only-prepared", "STOPPED", None)
        assert stopped.options["num_workers"] == "3"
        assert stopped.stages == ()
        plain = by_id[running]
        assert plain.state in ("STARTING", "RUNNING") and plain.streaming
        executor.result("plain").finish()


def test_a_job_that_could_not_start_shows_the_logged_error() -> None:
    with JobServer(RefusingExecutor(), "127.0.0.1", 0) as srv:
        stub = job_stub(srv.endpoint)
        job_id = prepare(stub, "refused").preparation_id
        run(stub, job_id)
        assert final_state(stub, job_id) == JobState.FAILED
        (status,) = JobServerStatus(srv.service).job_statuses()
        assert status.state == "FAILED"
        assert status.error == "could not start job %s:" % job_id
        assert status.traceback is not None and "no GPUs for job refused" in status.traceback


def test_a_status_that_raises_falls_back_to_the_servers_view(
        server: JobServer, ticking: TickingExecutor) -> None:
    stub = job_stub(server.endpoint)
    job_id = prepare(stub, "broken").preparation_id
    run(stub, job_id)
    result = ticking.result("broken")

    def broken() -> None:
        raise RuntimeError("tearing down")
    result.status = broken  # type: ignore[method-assign,assignment]
    (status,) = JobServerStatus(server.service).job_statuses()
    assert status.job_id == job_id and status.stages == ()
    result.finish()


def test_device_holders_are_named_by_the_servers_job_ids(
        server: JobServer, ticking: TickingExecutor, tmp_path: Path) -> None:
    stub = job_stub(server.endpoint)
    job_id = prepare(stub, "holder").preparation_id
    run(stub, job_id)
    result = ticking.result("holder")
    table = LeaseTable(str(tmp_path))
    table.acquire([Candidate("GPU-testing-0000-0000-0000-000000000001", "gpu", "1", "H100")],
                  1, holder="s2/worker-2", job=result.job_id)   # the runner's own id
    devices = LocalDevices(load_config(None, [
        "external-resource.gpu.driver-factory.class=testing",
        "external-resource.gpu.param.num-devices=2"]), str(tmp_path), cache_s=0.0)
    source = JobServerStatus(server.service, devices)
    rows = {d.index: d for d in source.device_statuses()}
    assert rows["1"].holder_job == job_id
    assert rows["1"].holder_worker == "worker-2"
    assert rows["0"].holder_job is None
    table.close()
    source.close()
    result.finish()


def test_the_ui_of_a_server_with_fake_gpus_lists_them(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    import json
    import urllib.request

    from beam_gpu_runner.resources.config import fake_gpu_keys
    monkeypatch.setenv("BEAM_GPU_RUNNER_LEASE_DIR", str(tmp_path))
    defaults = ServerJobDefaults(external_resources=tuple(fake_gpu_keys(3)))
    with JobServer(ControlledExecutor(), "127.0.0.1", 0, defaults=defaults, ui_port=0) as srv:
        assert srv.ui_url is not None
        with urllib.request.urlopen(srv.ui_url + "api/devices", timeout=30) as resp:
            devices = json.load(resp)["devices"]
    assert [(d["index"], d["fake"]) for d in devices] == [("0", True), ("1", True),
                                                         ("2", True)]
