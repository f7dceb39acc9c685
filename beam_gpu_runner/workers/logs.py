"""The Fn API logging service: workers' log records, re-logged here readably."""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

import grpc

from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.utils import thread_pool_executor

from beam_gpu_runner.bridge.beam import LOGENTRY_TO_LOG_LEVEL_MAP

_LOG = logging.getLogger("beam_gpu_runner.worker")

_BEAM_SOURCE = "/apache_beam/"
#: Warnings every harness prints at start when no main session was staged
#: (the normal case for GpuRunner's own workers): not worth a user's attention.
_STARTUP_NOISE = ("No session file found", "No semi_persistent_directory found")


class WorkerLogService(beam_fn_api_pb2_grpc.BeamFnLoggingServicer):
    def Logging(self, log_messages: Iterable[beam_fn_api_pb2.LogEntry.List],
                context: Any = None) -> Iterator[beam_fn_api_pb2.LogControl]:
        yield beam_fn_api_pb2.LogControl()
        worker = "?"
        if context is not None:
            worker = dict(context.invocation_metadata()).get("worker_id", "?")
        for message in log_messages:
            for entry in message.log_entries:
                level = LOGENTRY_TO_LOG_LEVEL_MAP.get(entry.severity, logging.INFO)
                if _BEAM_SOURCE in entry.log_location and (
                        level < logging.WARNING
                        or entry.message.startswith(_STARTUP_NOISE)):
                    # The harness's own start/stop chatter; user code keeps its level.
                    level = logging.DEBUG
                if _LOG.isEnabledFor(level):
                    _LOG.log(level, "[%s %s] %s%s", worker, entry.log_location,
                             entry.message, ("\n" + entry.trace) if entry.trace else "")


#: As Beam's own Fn API servers: accept the harness's keepalive pings (every
#: 20 s, also while idle). gRPC's defaults answer them with GOAWAY
#: "too_many_pings" after a few idle minutes, which ended a worker's log stream.
SERVER_OPTIONS = [
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
]


class LogServer:
    def __init__(self) -> None:
        self._server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                                   options=SERVER_OPTIONS)
        self.port = self._server.add_insecure_port("[::]:0")
        beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(
            WorkerLogService(), self._server)
        self._server.start()

    def close(self) -> None:
        self._server.stop(1).wait()
