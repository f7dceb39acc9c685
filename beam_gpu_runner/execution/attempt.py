"""Run one attempt of one bundle of one stage on one worker over the Fn API.

Beam's ``BundleManager`` does the Fn API conversation (register, send data
and timers, collect outputs, splits, finalization). We give it a per-attempt
view of the stage's ``BundleContextManager`` so that:

* the bundle runs on the worker we chose (not Beam's round robin), and
* its outputs and timers land in buffers private to this attempt, so a failed
  attempt leaves nothing behind and a retry produces each output once;
* GroupByKey input it writes can be grouped as it arrives (``arriving``).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.runners.portability.fn_api_runner import worker_handlers as beam_wh

from beam_gpu_runner.execution.arriving import GroupsFactory, OutputBuffer

TimerKey = tuple[str, str]   # (transform id, timer family id)


class _AttemptView:
    """A BundleContextManager that routes one attempt's worker and buffers."""

    def __init__(self, real: beam_exec.BundleContextManager,
                 worker: beam_wh.WorkerHandler,
                 grouped: Mapping[bytes, GroupsFactory]) -> None:
        self._real = real
        self._grouped = grouped
        self.worker_handlers = [worker]
        self.outputs: dict[bytes, OutputBuffer] = {}
        self.timer_outputs: dict[bytes, beam_exec.ListBuffer] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_buffer(self, buffer_id: bytes, transform_id: str) -> OutputBuffer:
        kind, name = translations.split_buffer_id(buffer_id)
        if kind == "timers":
            if buffer_id not in self.timer_outputs:
                self.timer_outputs[buffer_id] = beam_exec.ListBuffer(
                    self._real.get_timer_coder_impl(transform_id, name))
            return self.timer_outputs[buffer_id]
        if buffer_id not in self.outputs:
            grouped = self._grouped.get(buffer_id)
            self.outputs[buffer_id] = grouped() if grouped is not None else (
                beam_exec.ListBuffer(self._real.get_input_coder_impl(transform_id)))
        return self.outputs[buffer_id]


#: Input is sent to the worker in Data messages of about this size. Beam's
#: BundleManager writes a bundle's whole input into one buffer and sends it
#: on close, so the worker could not start before all of it had been copied,
#: sent and parsed (measured: ~80 ms of a 210 ms, 21 MB MNIST bundle).
INPUT_MESSAGE_BYTES = 1 << 20

_LOG = logging.getLogger(__name__)


class _BundleManager(fn_runner.BundleManager):
    """Beam's BundleManager, streaming input in pieces the worker starts on.

    Beam sends a bundle's input before its ProcessBundle request. In pieces
    that could deadlock: the worker queues at most 5 pieces per instruction
    it has not started, its reader then stops, the runner's send buffer
    (200 MB) fills and the request never goes out (seen with two ~100 MB
    bundles on one worker). So input over one piece is written by its own
    thread, and the request goes out at once, as Beam's Java runners do.
    """

    def _send_input_to_worker(self, process_bundle_id: str, read_transform_id: str,
                              byte_streams: Any) -> None:
        assert self._worker_handler is not None
        data_out = self._worker_handler.data_conn.output_stream(
            process_bundle_id, read_transform_id)
        chunks = list(byte_streams or [])
        if sum(len(c) for c in chunks) <= INPUT_MESSAGE_BYTES:
            _write_input(data_out, chunks)   # one message: Beam's way
            return
        threading.Thread(target=_write_input, args=(data_out, chunks), daemon=True,
                         name="input-%s-%s" % (process_bundle_id, read_transform_id)).start()


def _write_input(data_out: Any, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            data_out.write(chunk)   # chunks hold whole elements
            if data_out.size() >= INPUT_MESSAGE_BYTES:
                data_out.flush()
        data_out.close()
    except Exception:   # the worker went away: its bundle fails on its own
        _LOG.warning("Sending bundle input failed", exc_info=True)


@dataclass
class AttemptResult:
    response: beam_fn_api_pb2.InstructionResponse
    splits: list[beam_fn_api_pb2.ProcessBundleSplitResponse]
    #: data-output buffer id -> what this attempt wrote (a ListBuffer, or
    #: ArrivingGroups for a GroupByKey input grouped as it arrived)
    outputs: Mapping[bytes, OutputBuffer]
    #: timer buffer id -> timers this attempt wrote
    timer_outputs: Mapping[bytes, beam_exec.ListBuffer]
    view: Any = field(repr=False, default=None)


def run_attempt(
    stage_context: beam_exec.BundleContextManager,
    worker: beam_wh.WorkerHandler,
    inputs: Mapping[str, beam_exec.PartitionableBuffer],
    fired_timers: Mapping[TimerKey, beam_exec.PartitionableBuffer],
    cache_tokens: Iterator[beam_fn_api_pb2.ProcessBundleRequest.CacheToken],
    progress_frequency: Optional[float] = None,
    grouped: Optional[Mapping[bytes, GroupsFactory]] = None,
) -> AttemptResult:
    """``grouped``: output buffer ids whose data is grouped as it arrives
    (``arriving.ArrivingGroups``); other outputs are collected as chunks."""
    view = _AttemptView(stage_context, worker, grouped or {})
    manager = _BundleManager(
        view,  # type: ignore[arg-type]
        progress_frequency,
        cache_token_generator=cache_tokens)
    response, splits = manager.process_bundle(
        inputs, stage_context.stage_data_outputs, fired_timers,
        stage_context.stage_timer_outputs)
    return AttemptResult(response, list(splits), view.outputs, view.timer_outputs, view)
