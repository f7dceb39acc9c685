"""Turn one finished attempt into the engine's BundleSucceeded event.

Everything here runs on the driver thread: it owns the execution context's
shared structures (side-input state commits, grouping buffers).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Optional

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.utils.windowed_value import WindowedValue

from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.runners.portability.fn_api_runner import fn_runner

from beam_gpu_runner.engine.events import (
    BundleSucceeded, Payload, TimerUpdate, WindowedPayload)
from beam_gpu_runner.engine.timestamps import MIN_TIMESTAMP, Micros
from beam_gpu_runner.execution.arriving import (
    ArrivingGroups, OutputBuffer, released_by_window)
from beam_gpu_runner.execution.attempt import AttemptResult
from beam_gpu_runner.preprocess.stage_graph import buffer_name, timer_family_key

_LOG = logging.getLogger(__name__)


class ResidualBuffer(beam_exec.ListBuffer):
    """Unprocessed input handed back by a bundle, already in the stage's
    data-channel encoding (for a grouped input: grouped, not to regroup)."""

    @classmethod
    def of(cls, buffer: beam_exec.PartitionableBuffer, coder_impl: Any) -> "ResidualBuffer":
        out = cls(coder_impl)
        for chunk in buffer:
            out.append(chunk)
        return out


def has_data(buffer: OutputBuffer) -> bool:
    if isinstance(buffer, ArrivingGroups):
        return buffer.chunks > 0
    return any(chunk for chunk in buffer)


#: Outputs smaller than this go to one consumer bundle: cutting them buys no
#: parallelism worth a bundle's fixed cost (a round trip, a monitoring report).
SPLIT_MIN_BYTES = 1 << 20


def split_for_consumers(buffer: beam_exec.ListBuffer, parts: int) -> tuple[Payload, ...]:
    """Split one output buffer so consumer bundles can run concurrently."""
    if parts <= 1 or sum(len(chunk) for chunk in buffer) < SPLIT_MIN_BYTES:
        return (buffer,)
    coder_impl = buffer._coder_impl
    out = []
    for chunks in buffer.partition(parts):
        if any(chunks):
            part = beam_exec.ListBuffer(coder_impl)
            for chunk in chunks:
                part.append(chunk)
            out.append(part)
    return tuple(out)


def _micros(ts: Any) -> Micros:
    return int(ts.micros)


def collect_timers(stage_context: beam_exec.BundleContextManager,
                   result: AttemptResult) -> tuple[TimerUpdate, ...]:
    """The timers the attempt set or cleared, in order, one update per timer.

    A timer is identified by its user key, tag and windows (encoded); the
    engine keeps the latest update per identity across bundles.
    """
    updates = []
    for (transform_id, family), (buffer_id, _domain) in (
            stage_context.stage_timer_outputs.items()):
        written = result.timer_outputs.get(buffer_id)
        if written is None:
            continue
        coder_impl = stage_context.get_timer_coder_impl(transform_id, family)
        engine_family = timer_family_key(transform_id, family)
        for chunk in written:
            for timer in coder_impl.decode_all(chunk):
                identity = coder_impl.encode_nested(timer._replace(
                    clear_bit=True, fire_timestamp=None, hold_timestamp=None,
                    paneinfo=None))
                if timer.clear_bit:
                    updates.append(TimerUpdate(engine_family, identity, None))
                else:
                    updates.append(TimerUpdate(
                        engine_family, identity, coder_impl.encode_nested(timer),
                        fire_at=_micros(timer.fire_timestamp),
                        hold=_micros(timer.hold_timestamp)))
    return tuple(updates)


def collect_residuals(
    stage_context: beam_exec.BundleContextManager,
    result: AttemptResult,
    inputs_sent: Mapping[str, beam_exec.PartitionableBuffer],
) -> tuple[dict[str, tuple[Payload, ...]], Micros, float]:
    """SDK-initiated residuals and runner splits -> (inputs, hold, resume_at)."""
    deferred: dict[str, beam_exec.PartitionableBuffer] = {}
    # Beam's helpers ignore ``self``; they decode residual roots and channel
    # splits into per-input buffers exactly as FnApiRunner does.
    fn_runner.FnApiRunner._add_sdk_delayed_applications_to_deferred_inputs(
        None, result.view, result.response, deferred)  # type: ignore[arg-type]
    fn_runner.FnApiRunner._add_residuals_and_channel_splits_to_deferred_inputs(
        None, result.splits, result.view, inputs_sent, deferred)  # type: ignore[arg-type]
    if not deferred:
        return {}, MIN_TIMESTAMP, 0.0
    roots = list(result.response.process_bundle.residual_roots)
    for split in result.splits:
        roots.extend(split.residual_roots)
    watermarks = [
        wm.seconds * 1_000_000 + wm.nanos // 1000
        for root in roots for wm in root.application.output_watermarks.values()]
    # No estimate from the SDK means we know nothing: hold at MIN.
    hold = min(watermarks) if watermarks and len(watermarks) >= len(roots) else MIN_TIMESTAMP
    delays = [root.requested_time_delay.ToTimedelta().total_seconds() for root in roots
              if root.HasField("requested_time_delay")]
    resume_at = time.time() + max(delays) if delays and max(delays) > 0 else 0.0
    residuals: dict[str, tuple[Payload, ...]] = {
        transform: (ResidualBuffer.of(buffer, stage_context.get_input_coder_impl(transform)),)
        for transform, buffer in deferred.items()}
    return residuals, hold, resume_at


class ResultCollector:
    """Per-job: side-input commits and output fan-out."""

    def __init__(self, context: beam_exec.FnApiRunnerExecutionContext,
                 split_parts: Mapping[str, int], cut_by_window: bool = True) -> None:
        self._context = context
        #: batch: GroupByKey input is cut by window for release as the
        #: watermark passes; streaming: it goes whole to the grouping stage
        self._cut_by_window = cut_by_window
        #: buffer name -> how many pieces to cut it into for its consumers
        self._split_parts = split_parts
        self._window_coders: dict[bytes, Any] = {}

    def to_event(self, bundle_id: str, stage_context: beam_exec.BundleContextManager,
                 result: AttemptResult,
                 inputs_sent: Mapping[str, beam_exec.PartitionableBuffer]
                 ) -> BundleSucceeded:
        stage_name = stage_context.stage.name
        produced: dict[str, tuple[Payload, ...]] = {}
        for buffer_id in set(stage_context.stage_data_outputs.values()):
            buffer = result.outputs.get(buffer_id)
            if buffer is None or not has_data(buffer):
                continue
            name = buffer_name(buffer_id)
            if isinstance(buffer, ArrivingGroups):
                produced[name] = (buffer,)   # grouped already, goes whole
                continue
            self._commit_side_inputs(stage_name, buffer_id, buffer)
            if buffer_id.startswith(b"group:") and self._cut_by_window:
                produced[name] = self._by_window(buffer_id, buffer)
            else:
                produced[name] = split_for_consumers(buffer, self._split_parts.get(name, 1))
        residuals, hold, resume_at = collect_residuals(stage_context, result, inputs_sent)
        return BundleSucceeded(
            bundle_id=bundle_id, produced=produced, residuals=residuals,
            residual_hold=hold, resume_at=resume_at,
            timers=collect_timers(stage_context, result))

    def _by_window(self, buffer_id: bytes, buffer: beam_exec.ListBuffer
                   ) -> tuple[Payload, ...]:
        """Cut GroupByKey input by window, so each window fires as the
        watermark passes its end (non-merging windows; others wait for the
        end of input, as do global windows)."""
        coder_impl = self._window_coder(buffer_id)
        if coder_impl is None:
            return (buffer,)
        streams: dict[int, Any] = {}
        for chunk in buffer:
            for value in coder_impl.decode_all(chunk):
                for window in value.windows:
                    end = int(window.max_timestamp().micros)
                    out = streams.get(end)
                    if out is None:
                        out = streams[end] = create_OutputStream()
                    coder_impl.encode_to_stream(
                        WindowedValue(value.value, value.timestamp, (window,),
                                      value.pane_info), out, True)
        payloads = []
        for end, out in sorted(streams.items()):
            part = beam_exec.ListBuffer(buffer._coder_impl)
            part.append(out.get())
            payloads.append(WindowedPayload(part, end))
        return tuple(payloads)

    def _window_coder(self, buffer_id: bytes) -> Any:
        if buffer_id not in self._window_coders:
            context = self._context
            _, gbk_transform = translations.split_buffer_id(buffer_id)
            transform = context.pipeline_components.transforms[gbk_transform]
            input_pcoll = next(iter(transform.inputs.values()))
            strategy = context.pipeline_components.windowing_strategies[
                context.pipeline_components.pcollections[input_pcoll].windowing_strategy_id]
            splittable = released_by_window(strategy)
            coder = context.pipeline_context.coders[context.safe_coders[
                context.data_channel_coders[input_pcoll]]]
            self._window_coders[buffer_id] = coder.get_impl() if splittable else None
        return self._window_coders[buffer_id]

    def _commit_side_inputs(self, stage_name: str, buffer_id: bytes,
                            buffer: beam_exec.ListBuffer) -> None:
        descriptors = self._context.side_input_descriptors_by_stage.get(stage_name, {})
        mine = {k: v for k, v in descriptors.items() if v[0] == buffer_id}
        if not mine:
            return
        self._context.pcoll_buffers[buffer_id] = buffer
        try:
            self._context.commit_side_inputs_to_state(mine)
        finally:
            self._context.pcoll_buffers.pop(buffer_id, None)


def monitoring_infos(result: Optional[AttemptResult]) -> list:
    if result is None:
        return []
    return list(result.response.process_bundle.monitoring_infos)

