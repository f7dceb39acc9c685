"""One attempt of one bundle on one worker: the Fn API conversation.

The runner's side of a ProcessBundle, as Beam's ``BundleManager`` does it,
written out so that the attempt runs on the worker the pool chose, its
outputs land in sinks private to the attempt (a failed attempt leaves
nothing behind; a retry produces each output once), its input streams in
~1 MB messages, and the driver can split it while it runs:

1. every timer family of the stage gets its fired timers (maybe none);
2. the ProcessBundle request goes out, then each data input's elements in
   ~1 MB messages (large input from its own thread, see ``_send_input``);
3. Data and Timers messages are read into the attempt's sinks until every
   expected output is closed (a GroupByKey's input is grouped as it arrives);
4. the response comes back; a bundle that needs it is finalized.

``split(fraction)`` may be called from another thread while 3 runs: it asks
the worker to keep ``fraction`` of the remainder of the bundle's one data
input (Beam's ProcessBundleSplitRequest) and returns the worker's answer.
"""
from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol

from apache_beam.portability.api import beam_fn_api_pb2

from beam_gpu_runner.bridge.beam import data_channel_send
from beam_gpu_runner.bridge.buffers import Input

_LOG = logging.getLogger(__name__)

#: Input is sent to the worker in Data messages of about this size. Sent as
#: one message (Beam's way), a big bundle's first element reaches the worker
#: only after all of it was copied, sent and parsed (measured: ~80 ms of a
#: 210 ms, 21 MB MNIST bundle).
INPUT_MESSAGE_BYTES = 1 << 20

TimerKey = tuple[str, str]   # (transform id, timer family id)

_instruction_ids = itertools.count(1)


class Sink(Protocol):
    def append(self, data: bytes) -> None: ...


class ChunkSink(list):   # type: ignore[type-arg]
    """Collects a data output's messages as they arrive (no copy)."""

    def append(self, data: bytes) -> None:  # type: ignore[override]
        if data:
            super().append(data)


@dataclass
class AttemptPlan:
    """What one attempt sends and expects; built on the driver thread."""

    descriptor_id: str
    #: data input transform -> the elements to send (every data input, maybe empty)
    inputs: Mapping[str, Input]
    #: every timer family of the stage -> the encoded timers that fire (maybe none)
    timers: Mapping[TimerKey, list[bytes]]
    #: data output transform -> a new sink for what the attempt writes there
    outputs: Mapping[str, Callable[[], Sink]]
    cache_token: Any = None


@dataclass
class AttemptResult:
    response: beam_fn_api_pb2.InstructionResponse
    #: data output transform -> what the attempt wrote
    outputs: dict[str, Sink] = field(default_factory=dict)
    #: (transform, family) -> encoded timers the attempt set or cleared
    timers: dict[TimerKey, list[bytes]] = field(default_factory=dict)
    worker_id: str = ""
    #: (elements read, elements written) by the data channels, from the SDK's counts
    element_counts: tuple[int, int] = (0, 0)
    bytes_out: int = 0

    @property
    def monitoring_infos(self) -> list[Any]:
        return list(self.response.process_bundle.monitoring_infos)


class BundleError(RuntimeError):
    """The worker reported that the bundle failed (its message names the step)."""


class Attempt:
    """See the module docstring. ``run`` once, on the pool's thread."""

    def __init__(self, plan: AttemptPlan, worker: Any) -> None:
        self.plan = plan
        self.worker = worker
        self.instruction_id = "bundle_%d" % next(_instruction_ids)
        self._lock = threading.Lock()
        self._requested = False   # the ProcessBundle request went out
        self._finished = False    # its response came back
        #: what of the input is still this attempt's after splits (bundles.py)
        self.split_ledger: Any = None

    def run(self) -> AttemptResult:
        plan, worker = self.plan, self.worker
        for (transform, family), fired in plan.timers.items():
            stream = worker.data_conn.output_timer_stream(
                self.instruction_id, transform, family)
            for timer in fired:
                stream.write(timer)
            stream.close()
        request = beam_fn_api_pb2.InstructionRequest(
            instruction_id=self.instruction_id,
            process_bundle=beam_fn_api_pb2.ProcessBundleRequest(
                process_bundle_descriptor_id=plan.descriptor_id,
                cache_tokens=[plan.cache_token] if plan.cache_token is not None else []))
        with self._lock:
            future = worker.push(request)
            self._requested = True
        for transform, chunks in plan.inputs.items():
            _send_input(worker, self.instruction_id, transform, chunks)
        outputs: dict[str, Sink] = {}
        timers: dict[TimerKey, list[bytes]] = {}
        expected: list[Any] = list(plan.outputs)
        expected.extend(plan.timers)
        for message in worker.data_conn.input_elements(
                self.instruction_id, expected,
                abort_callback=lambda: future.is_done() and bool(future.get().error)):
            if isinstance(message, beam_fn_api_pb2.Elements.Data):
                sink = outputs.get(message.transform_id)
                if sink is None:
                    sink = outputs[message.transform_id] = plan.outputs[
                        message.transform_id]()
                sink.append(message.data)
            elif message.timers:
                timers.setdefault((message.transform_id, message.timer_family_id),
                                  []).append(message.timers)
        response = future.get()
        with self._lock:
            self._finished = True
        if response.error:
            raise BundleError(response.error)
        if response.process_bundle.requires_finalization:
            finalized = worker.push(beam_fn_api_pb2.InstructionRequest(
                finalize_bundle=beam_fn_api_pb2.FinalizeBundleRequest(
                    instruction_id=self.instruction_id))).get()
            if finalized.error:
                raise BundleError(finalized.error)
        return AttemptResult(response, outputs, timers, worker_id=worker.worker_id,
                             bytes_out=sum(len(d) for sink in outputs.values()
                                           if isinstance(sink, ChunkSink) for d in sink))

    def split(self, fraction_of_remainder: float
              ) -> Optional[beam_fn_api_pb2.ProcessBundleSplitResponse]:
        """Ask the worker to keep ``fraction_of_remainder`` of what is left of
        the bundle's one data input; None when it did not split (not started,
        already done, nothing left, or an SDK refusal)."""
        if len(self.plan.inputs) != 1:
            return None
        [(transform, chunks)] = self.plan.inputs.items()
        with self._lock:
            if not self._requested or self._finished:
                return None
        request = beam_fn_api_pb2.InstructionRequest(
            process_bundle_split=beam_fn_api_pb2.ProcessBundleSplitRequest(
                instruction_id=self.instruction_id,
                desired_splits={transform: beam_fn_api_pb2.ProcessBundleSplitRequest
                                .DesiredSplit(
                                    fraction_of_remainder=fraction_of_remainder,
                                    estimated_input_elements=chunks.estimated_elements())}))
        # No timeout: a worker that split answers, and a worker that died has
        # its pending requests failed (a late answer must not be dropped: the
        # worker would skip the residual and nobody would process it).
        try:
            response = self.worker.push(request).get()
        except Exception as exc:   # the worker went away: the bundle fails on its own
            _LOG.debug("Split of %s failed: %s", self.instruction_id, exc)
            return None
        split = response.process_bundle_split
        if response.error or not (split.channel_splits or split.residual_roots):
            _LOG.debug("Split of %s refused: %s", self.instruction_id,
                       response.error or "nothing to split")
            return None
        return split


def _send_input(worker: Any, instruction_id: str, transform: str, chunks: Input) -> None:
    """Input in ~1 MB messages. Input over one message is written from its own
    thread: Beam sends input before the request, and in pieces that deadlocks
    (the worker queues 5 pieces per instruction it has not started, its reader
    stops, the runner's 200 MB send buffer fills; seen with two ~100 MB
    bundles on one worker), so the request goes out first, as Beam's Java
    runners do, and the input follows."""
    channel = worker.data_conn
    if 0 <= chunks.nbytes <= INPUT_MESSAGE_BYTES:
        _write(channel, instruction_id, transform, iter(chunks))
        return
    threading.Thread(target=_write, args=(channel, instruction_id, transform, iter(chunks)),
                     daemon=True, name="input-%s-%s" % (instruction_id, transform)).start()


def _write(channel: Any, instruction_id: str, transform: str,
           chunks: Iterator[bytes]) -> None:
    """Each ~1 MB of chunks (whole elements) as one Data message, then the
    end-of-stream marker: straight onto the channel's send queue, as Beam's
    output stream would put them, without copying them through its buffer
    (a chunk of 1 MB or more is sent as it is)."""
    send = data_channel_send(channel)

    def message(data: bytes) -> None:
        send(beam_fn_api_pb2.Elements.Data(
            instruction_id=instruction_id, transform_id=transform, data=data))

    try:
        pending: list[bytes] = []
        size = 0
        for chunk in chunks:
            pending.append(chunk)
            size += len(chunk)
            if size >= INPUT_MESSAGE_BYTES:
                message(pending[0] if len(pending) == 1 else b"".join(pending))
                pending, size = [], 0
        if pending:
            message(b"".join(pending))
        send(beam_fn_api_pb2.Elements.Data(
            instruction_id=instruction_id, transform_id=transform, is_last=True))
    except Exception:   # the worker went away: its bundle fails on its own
        _LOG.warning("Sending bundle input failed", exc_info=True)


__all__ = ["Attempt", "AttemptPlan", "AttemptResult", "BundleError", "ChunkSink",
           "INPUT_MESSAGE_BYTES"]
