"""Beam's Fn API reader threads in the runner, when a worker goes away.

Each worker has two streams into the runner's gRPC server, read by threads
of Beam's: ``beam_control_read`` (``ControlConnection._read``) and
``read_grpc_client_inputs`` (``_GrpcDataChannel._read_inputs``). When the
worker process ends without saying goodbye (it crashed or was killed and
its bundle is retried, or the runner stopped a busy one on cancel), both
streams end with a bare ``grpc.RpcError``: the data reader logs "Failed to
read inputs in the data plane." with a traceback and re-raises, and both
threads die with "Exception in thread ..." and another traceback, ~50 lines
per worker for an event the runner handles and reports itself ("worker ...
died", a retry, a cancel).

:func:`install` turns exactly those into one INFO line each (the traceback
at DEBUG): a logging filter on Beam's data plane logger and a
``threading.excepthook`` that hands every other thread exception on
unchanged. What the threads do is not changed.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

import grpc

_LOG = logging.getLogger(__name__)

#: Beam's reader threads (worker_handlers.ControlConnection, data_plane).
READER_THREADS = frozenset({"beam_control_read", "read_grpc_client_inputs"})
DATA_PLANE_LOGGER = "apache_beam.runners.worker.data_plane"
DATA_PLANE_MESSAGE = "Failed to read inputs in the data plane."

_installed = False
_install_lock = threading.Lock()


def _stream_ended(exc: Optional[BaseException]) -> bool:
    return isinstance(exc, grpc.RpcError)


def _say(where: str, exc_info: Any) -> None:
    _LOG.info("A worker's Fn API stream ended (%s: %s); the runner handles the "
              "worker's end", where, type(exc_info[1]).__name__)
    _LOG.debug("%s", where, exc_info=exc_info)


class DataPlaneFilter(logging.Filter):
    """Drops the data plane's "Failed to read inputs" record for an ended
    stream (said once at INFO instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if (record.msg == DATA_PLANE_MESSAGE and exc_info
                and _stream_ended(exc_info[1])):
            _say("data plane reader", exc_info)
            return False
        return True


def quiet_excepthook(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A ``threading.excepthook`` that says an ended stream of Beam's reader
    threads in one line and passes everything else to ``previous``."""

    def hook(args: Any) -> Any:
        thread = getattr(args, "thread", None)
        if (thread is not None and thread.name in READER_THREADS
                and _stream_ended(args.exc_value)):
            _say("thread %s" % thread.name,
                 (args.exc_type, args.exc_value, args.exc_traceback))
            return None
        return previous(args)

    hook.beam_gpu_runner_lost_streams = True   # type: ignore[attr-defined]
    return hook


def install() -> None:
    """Install the filter and the excepthook once per process (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        logging.getLogger(DATA_PLANE_LOGGER).addFilter(DataPlaneFilter())
        if not getattr(threading.excepthook, "beam_gpu_runner_lost_streams", False):
            threading.excepthook = quiet_excepthook(threading.excepthook)


__all__ = ["DataPlaneFilter", "install", "quiet_excepthook"]
