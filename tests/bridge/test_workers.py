"""A stopped worker fails every request at once (bridge/workers.py)."""
from __future__ import annotations

import pytest
from apache_beam.portability.api import beam_fn_api_pb2

from beam_gpu_runner.bridge.beam import worker_handlers
from beam_gpu_runner.bridge.workers import Worker
from beam_gpu_runner.workers.factory import WorkerStoppedError


class TestingHandler:
    __test__ = False

    def __init__(self) -> None:
        self.worker_id = "w1"
        self.control_conn = worker_handlers.ControlConnection()
        self.data_conn = object()


def _request(instruction_id: str) -> beam_fn_api_pb2.InstructionRequest:
    return beam_fn_api_pb2.InstructionRequest(instruction_id=instruction_id)


def test_requests_before_and_after_the_stop_fail_instead_of_waiting_forever():
    handler = TestingHandler()
    worker = Worker(handler)
    pending = worker.push(_request("before"))
    worker.stop_requests(WorkerStoppedError("w1"))
    with pytest.raises(WorkerStoppedError, match="w1 was stopped"):
        pending.get(timeout=5)
    # A pool thread that took the worker just before the stop sends now:
    with pytest.raises(WorkerStoppedError, match="w1 was stopped"):
        worker.push(_request("after"))
    assert handler.control_conn.get_req().instruction_id == "before"   # only that one


def test_the_worker_shows_its_handlers_connections_and_state():
    handler = TestingHandler()
    worker = Worker(handler)
    assert worker.worker_id == "w1" and worker.data_conn is handler.data_conn
    assert worker.lost is None and worker.process is None
    handler.lost = "worker w1 died"   # type: ignore[attr-defined]
    assert worker.lost == "worker w1 died"
