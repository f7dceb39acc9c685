"""A stopped worker's control connection fails every request (workers/factory.py)."""
from __future__ import annotations

import pytest
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import worker_handlers as beam_wh

from beam_gpu_runner.workers.factory import WorkerStoppedError, refuse_requests


def _request(instruction_id: str) -> beam_fn_api_pb2.InstructionRequest:
    return beam_fn_api_pb2.InstructionRequest(instruction_id=instruction_id)


def test_requests_before_and_after_the_stop_fail_instead_of_waiting_forever():
    control = beam_wh.ControlConnection()
    pending = control.push(_request("before"))
    refuse_requests(control, WorkerStoppedError("w1"))
    # A pool thread that took the worker just before the stop sends now:
    late = control.push(_request("after"))
    for future in (pending, late):
        with pytest.raises(WorkerStoppedError, match="w1 was stopped"):
            future.get(timeout=5)
    assert control.get_req().instruction_id == "before"   # only that one went out
    control.push(beam_wh.BeamFnControlServicer._DONE_MARKER)   # the goodbye still does
    assert control.get_req() is beam_wh.BeamFnControlServicer._DONE_MARKER
