"""Engine bundles to Fn API attempts and back: inputs, outputs, residuals, timers, splits.

``BundleBridge`` is the driver's whole view of Beam for pooled stages:

* ``plan(bundle)``: the attempt to run (every data input's elements, every
  timer family's fired timers, a fresh sink per data output);
* ``succeeded(bundle, result)``: the engine's ``BundleSucceeded`` (outputs per
  buffer, SDF residuals with their watermark and delay, timer updates keyed by
  user key/tag/window, side inputs committed to the state API);
* ``split(bundle, attempt, fraction)``: ask a running attempt to split and
  turn the answer into ``BundleSplit`` (primary and residual input) or
  ``SplitRefused``.

Outputs are handed on as they came (``Chunks``), never decoded; a batch
GroupByKey's input arrives grouped (``Groups``), or grouped per window when
windows are released one by one.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Optional, Union

from apache_beam.metrics import monitoring_infos as mi
from apache_beam.portability.api import beam_fn_api_pb2

from beam_gpu_runner.bridge.beam import DATA_INPUT_URN, cache_token_generator
from beam_gpu_runner.bridge.buffers import (
    BufferId, BufferKind, Chunks, Input, StreamedChunks, concat)
from beam_gpu_runner.bridge.context import JobContext, StageContext
from beam_gpu_runner.bridge.fnapi import Attempt, AttemptPlan, AttemptResult, ChunkSink, Sink
from beam_gpu_runner.bridge.grouped import Groups, by_window
from beam_gpu_runner.engine.events import (
    Bundle, BundleSplit, BundleSucceeded, Payload, SplitRefused, TimerUpdate,
    WindowedPayload)
from beam_gpu_runner.engine.timestamps import MIN_TIMESTAMP, Micros

_LOG = logging.getLogger(__name__)


def timer_family_key(transform_id: str, family: str) -> str:
    """The engine's id of a timer family: unique within its stage."""
    return "%s\x1f%s" % (transform_id, family)


class BundleBridge:
    """Per job; see the module docstring. ``plan`` and ``succeeded`` run on
    the driver thread; ``split`` on any thread (it reads only the attempt)."""

    def __init__(self, context: JobContext, streaming: bool) -> None:
        self._context = context
        #: streaming: GroupByKey input goes to the runner-side grouping stage
        #: as chunks; batch: it is grouped by the producing attempt
        self._streaming = streaming
        self._tokens = cache_token_generator()
        self._windowed: dict[BufferId, bool] = {}

    # ---- into an attempt --------------------------------------------------------

    def plan(self, bundle: Bundle) -> AttemptPlan:
        context = self._context
        stage = context.stage(bundle.stage, bundle.drain)
        inputs = {}
        for transform in context.data_inputs(stage):
            inputs[transform] = self._input_chunks(
                stage, transform, bundle.inputs.get(transform, ()))
        timers: dict[tuple[str, str], list[bytes]] = {}
        for transform, family in stage.stage_timer_outputs:
            timers[(transform, family)] = list(
                bundle.timers.get(timer_family_key(transform, family), ()))
        outputs = {transform: self._sink_factory(buffer)
                   for transform, buffer in context.data_outputs(stage).items()}
        return AttemptPlan(stage.process_bundle_descriptor.id, inputs, timers, outputs,
                           cache_token=next(self._tokens))

    def _input_chunks(self, stage: StageContext, transform: str,
                      payloads: Iterable[Payload]) -> Input:
        groups = [p for p in payloads if isinstance(p, Groups)]
        chunks = [p for p in payloads if isinstance(p, Chunks)]
        coder = stage.get_input_coder_impl(transform)
        if groups:
            merged = Groups.merged(groups)
            if merged.spilled and not chunks:   # read back from disk as it is sent
                return StreamedChunks(merged.encoded(), coder, merged.keys)
            chunks.append(Chunks.of(merged.encoded(), coder, merged.keys))
        if not chunks:
            return Chunks((), coder, 0)
        return concat(chunks)

    def _sink_factory(self, buffer: BufferId) -> Callable[[], Sink]:
        if (buffer.kind is BufferKind.GROUP and not self._streaming
                and not self._released_by_window(buffer)):
            return lambda: self._context.empty_groups(buffer)
        return ChunkSink

    def _released_by_window(self, buffer: BufferId) -> bool:
        if buffer not in self._windowed:
            self._windowed[buffer] = self._context.released_by_window(buffer)
        return self._windowed[buffer]

    @staticmethod
    def attempt(plan: AttemptPlan, worker: Any) -> Attempt:
        return Attempt(plan, worker)

    # ---- out of an attempt ------------------------------------------------------

    def succeeded(self, bundle: Bundle, plan: AttemptPlan, result: AttemptResult
                  ) -> BundleSucceeded:
        context = self._context
        stage = context.stage(bundle.stage, bundle.drain)
        counts, read = _channel_counts(stage, result.monitoring_infos)
        result.element_counts = (read, sum(counts.values()))
        # Several data outputs may write one buffer (a Flatten before a
        # GroupByKey, a CoGroupByKey): their sinks are one output.
        by_buffer: dict[BufferId, list[str]] = {}
        for transform, buffer in context.data_outputs(stage).items():
            if transform in result.outputs:
                by_buffer.setdefault(buffer, []).append(transform)
        produced: dict[str, tuple[Payload, ...]] = {}
        for buffer, transforms in by_buffer.items():
            sinks = [result.outputs[t] for t in transforms]
            if all(isinstance(s, Groups) for s in sinks):
                groups = Groups.merged([s for s in sinks if isinstance(s, Groups)])
                if groups.has_data():
                    produced[str(buffer)] = (groups,)
                continue
            chunks = concat(
                Chunks.of(sink, self._output_coder(stage, t), counts.get(t))
                for t, sink in zip(transforms, sinks) if isinstance(sink, ChunkSink))
            if not chunks:
                continue
            context.commit_side_inputs(bundle.stage, buffer, chunks)
            if buffer.kind is BufferKind.GROUP and not self._streaming:
                produced[str(buffer)] = self._by_window(buffer, chunks)
            else:
                produced[str(buffer)] = (chunks,)
        residuals, hold, resume_at = self._residuals(stage, result.response)
        return BundleSucceeded(
            bundle_id=bundle.id, produced=produced, residuals=residuals,
            residual_hold=hold, resume_at=resume_at,
            timers=self._timer_updates(stage, result))

    def _output_coder(self, stage: StageContext, transform: str) -> Any:
        [pcollection] = stage.process_bundle_descriptor.transforms[transform].inputs.values()
        return self._context.channel_coder(pcollection).get_impl()

    def _by_window(self, buffer: BufferId, chunks: Chunks) -> tuple[Payload, ...]:
        """Grouped per window, each released as the watermark passes its end."""
        template = self._context.empty_groups(buffer)
        pre = template._pre_grouped_coder.get_impl()
        return tuple(WindowedPayload(groups, end)
                     for end, groups in sorted(by_window(chunks, pre, template).items()))

    def _residuals(self, stage: StageContext, response: beam_fn_api_pb2.InstructionResponse
                   ) -> tuple[dict[str, tuple[Payload, ...]], Micros, float]:
        """SDK-initiated residuals (checkpoints) -> (inputs, hold, resume_at)."""
        roots = list(response.process_bundle.residual_roots)
        if not roots:
            return {}, MIN_TIMESTAMP, 0.0
        by_input: dict[str, list[bytes]] = {}
        for root in roots:
            app = root.application
            by_input.setdefault(stage.input_for(app.transform_id, app.input_id),
                                []).append(app.element)
        hold = _estimated_hold(roots)
        if hold is None:   # no estimate from the SDK means we know nothing
            hold = MIN_TIMESTAMP
        delays = [root.requested_time_delay.ToTimedelta().total_seconds() for root in roots
                  if root.HasField("requested_time_delay")]
        resume_at = time.time() + max(delays) if delays and max(delays) > 0 else 0.0
        residuals: dict[str, tuple[Payload, ...]] = {
            transform: (Chunks.of(elements, stage.get_input_coder_impl(transform),
                                  len(elements)),)
            for transform, elements in by_input.items()}
        return residuals, hold, resume_at

    def _timer_updates(self, stage: StageContext, result: AttemptResult
                       ) -> tuple[TimerUpdate, ...]:
        """The timers the attempt set or cleared, in order, one update per timer.

        A timer is identified by its user key, tag and windows (encoded); the
        engine keeps the latest update per identity across bundles.
        """
        updates = []
        for (transform, family), written in result.timers.items():
            coder = stage.get_timer_coder_impl(transform, family)
            key = timer_family_key(transform, family)
            for chunk in written:
                for timer in coder.decode_all(chunk):
                    identity = coder.encode_nested(timer._replace(
                        clear_bit=True, fire_timestamp=None, hold_timestamp=None,
                        paneinfo=None))
                    if timer.clear_bit:
                        updates.append(TimerUpdate(key, identity, None))
                    else:
                        updates.append(TimerUpdate(
                            key, identity, coder.encode_nested(timer),
                            fire_at=int(timer.fire_timestamp.micros),
                            hold=int(timer.hold_timestamp.micros)))
        return tuple(updates)

    # ---- splits -----------------------------------------------------------------

    def split(self, bundle: Bundle, attempt: Attempt, fraction_of_remainder: float
              ) -> Union[BundleSplit, SplitRefused]:
        """Split a running attempt; see the module docstring. Exact: the
        primary is what the worker still processes, the residual all it gave up."""
        [(transform, sent)] = attempt.plan.inputs.items()
        if not isinstance(sent, Chunks):   # streamed from disk: not held, not split
            return SplitRefused(bundle.id)
        response = attempt.split(fraction_of_remainder)
        if response is None:
            return SplitRefused(bundle.id)
        ledger = _ledger(attempt, sent)
        primary_end, residual_start = ledger.stop - 1, ledger.stop
        for channel in response.channel_splits:
            if channel.transform_id == transform:
                primary_end = channel.last_primary_element
                residual_start = channel.first_residual_element
        stage = self._context.stage(bundle.stage, bundle.drain)
        for root in list(response.primary_roots) + [r.application for r in
                                                     response.residual_roots]:
            owner = stage.input_for(root.transform_id, root.input_id)
            if owner != transform:
                raise RuntimeError(
                    "split of bundle %s of stage %s: the worker returned a root for "
                    "input %s, not the split input %s" % (
                        bundle.id, bundle.stage, owner, transform))
        unprocessed = ledger.elements[residual_start:ledger.stop]
        residual = [r.application.element for r in response.residual_roots] + unprocessed
        primary = (ledger.elements[:primary_end + 1]
                   + [root.element for root in response.primary_roots])
        ledger.stop = min(ledger.stop, residual_start)
        return BundleSplit(bundle.id,
                           primary={transform: (sent.with_elements(primary),)},
                           residual={transform: (sent.with_elements(residual),)}
                           if residual else {},
                           # a splittable DoFn's remainder alone: its estimate
                           residual_hold=None if unprocessed
                           else _estimated_hold(response.residual_roots))


def _estimated_hold(roots: Iterable[Any]) -> Optional[Micros]:
    """The earliest watermark the SDK estimated for residual roots (a
    splittable DoFn's), or None when a root has no estimate."""
    roots = list(roots)
    watermarks = [wm.seconds * 1_000_000 + wm.nanos // 1000
                  for root in roots for wm in root.application.output_watermarks.values()]
    return min(watermarks) if roots and len(watermarks) >= len(roots) else None


class _Ledger:
    """What of an attempt's input is still its own across several splits."""

    def __init__(self, sent: Chunks) -> None:
        self.elements = sent.element_bytes()
        self.stop = len(self.elements)


def _ledger(attempt: Attempt, sent: Chunks) -> _Ledger:
    if attempt.split_ledger is None:
        attempt.split_ledger = _Ledger(sent)
    ledger: _Ledger = attempt.split_ledger
    return ledger


def _channel_counts(stage: StageContext, infos: Iterable[Any]) -> tuple[dict[str, int], int]:
    """(data output transform -> elements the attempt wrote there, elements
    its data inputs read), from the SDK's element counts of the PCollections
    the channels write and read."""
    transforms = stage.process_bundle_descriptor.transforms
    by_pcollection = {}
    for info in infos:
        if info.urn == mi.ELEMENT_COUNT_URN:
            pcollection = info.labels.get(mi.PCOLLECTION_LABEL)
            if pcollection:
                by_pcollection[pcollection] = int(mi.extract_counter_value(info))
    out = {}
    for transform in stage.stage_data_outputs:
        [pcollection] = transforms[transform].inputs.values()
        if pcollection in by_pcollection:
            out[transform] = by_pcollection[pcollection]
    read = sum(by_pcollection.get(pcollection, 0)
               for proto in transforms.values() if proto.spec.urn == DATA_INPUT_URN
               for pcollection in proto.outputs.values())
    return out, read





class PayloadDivider:
    """The engine's ``Divider`` for the runner's payloads: element chunks are
    cut at chunk boundaries or by element, grouped input by key."""

    def elements(self, payloads: tuple[Payload, ...]) -> int:
        if all(isinstance(p, Chunks) for p in payloads):
            return sum(p.estimated_elements() for p in payloads)
        if all(isinstance(p, Groups) for p in payloads):
            return sum(p.keys for p in payloads)
        return 0

    def divide(self, payloads: tuple[Payload, ...], parts: int
               ) -> list[tuple[Payload, ...]]:
        if all(isinstance(p, Groups) for p in payloads):
            groups = [p for p in payloads if isinstance(p, Groups)]
            return [(piece,) for piece in Groups.merged(groups).divide(parts)]
        chunks = [p for p in payloads if isinstance(p, Chunks)]
        return [(piece,) for piece in concat(chunks).divide(parts)]

__all__ = ["BundleBridge", "PayloadDivider", "timer_family_key"]
