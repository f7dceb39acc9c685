"""A worker's ended Fn API streams: one line each, not Beam's tracebacks."""
from __future__ import annotations

import logging
import sys
import threading

import grpc

from beam_gpu_runner.workers import lost_streams


def _record(exc: BaseException, msg: str = lost_streams.DATA_PLANE_MESSAGE) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord(lost_streams.DATA_PLANE_LOGGER, logging.ERROR, __file__, 1,
                             msg, None, exc_info)


def test_data_plane_record_of_an_ended_stream_becomes_one_info_line(caplog):
    keep = lost_streams.DataPlaneFilter()
    with caplog.at_level(logging.DEBUG, logger=lost_streams.__name__):
        assert not keep.filter(_record(grpc.RpcError()))
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.getMessage() for r in infos] == [
        "A worker's Fn API stream ended (data plane reader: RpcError); the runner "
        "handles the worker's end"]
    assert keep.filter(_record(ValueError("a real bug")))          # other errors stay
    assert keep.filter(_record(grpc.RpcError(), msg="something else"))


def _run_thread(name: str, exc: BaseException) -> None:
    def boom() -> None:
        raise exc
    thread = threading.Thread(target=boom, name=name)
    thread.start()
    thread.join()


def test_excepthook_quiets_only_beams_reader_threads_on_rpc_errors(monkeypatch):
    seen = []
    monkeypatch.setattr(threading, "excepthook",
                        lost_streams.quiet_excepthook(lambda args: seen.append(
                            (args.thread.name, type(args.exc_value).__name__))))
    _run_thread("beam_control_read", grpc.RpcError())
    _run_thread("read_grpc_client_inputs", grpc.RpcError())
    _run_thread("beam_control_read", KeyError("not a stream's end"))
    _run_thread("my_thread", grpc.RpcError())
    assert seen == [("beam_control_read", "KeyError"), ("my_thread", "RpcError")]


def test_install_is_idempotent(monkeypatch):
    monkeypatch.setattr(lost_streams, "_installed", False)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    data_plane = logging.getLogger(lost_streams.DATA_PLANE_LOGGER)
    monkeypatch.setattr(data_plane, "filters", [])
    lost_streams.install()
    hook = threading.excepthook
    lost_streams.install()
    assert threading.excepthook is hook and len(data_plane.filters) == 1
