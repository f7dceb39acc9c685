"""Streaming GroupByKey on the driver: Beam's trigger driver, per key.

In a streaming job each GroupByKey is a runner-side stage of the engine
(``preprocess.stage_graph.grouping_spec``). Its bundles run here, on the
driver thread, as Beam's DirectRunner runs ``_StreamingGroupAlsoByWindow``:
elements and fired timers go through ``GeneralTriggerDriver`` with one
``InMemoryUnmergedState`` per key; panes come out encoded for the reader.
The engine gets, per key, the earliest event- and processing-time timer and
the state's watermark hold, so windows fire as the watermark passes (merging
windows too), with early and late firings, lateness and accumulation.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Optional

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.trigger import InMemoryUnmergedState, create_trigger_driver
from apache_beam.utils.timestamp import MAX_TIMESTAMP as BEAM_MAX
from apache_beam.utils.timestamp import MIN_TIMESTAMP as BEAM_MIN
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.engine.events import Bundle, BundleSucceeded, TimerUpdate
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP, Micros
from beam_gpu_runner.preprocess.stage_graph import (
    GROUPING_EVENT_TIMERS, GROUPING_PROCESSING_TIMERS, grouped_buffer)


class _Clock:
    """The trigger driver's processing time, set before each bundle."""

    def __init__(self) -> None:
        self.now = Timestamp(0)

    def time(self) -> Timestamp:
        return self.now


class StreamingGroupByKey:
    """One GroupByKey buffer's keyed trigger state; see the module docstring."""

    def __init__(self, group_buffer: str, windowing: Windowing,
                 pre_grouped_coder: Any, post_grouped_coder: Any) -> None:
        self._buffer = group_buffer
        self._clock = _Clock()
        self._driver = create_trigger_driver(windowing, clock=self._clock)
        self._in_impl = pre_grouped_coder.get_impl()
        self._key_impl = pre_grouped_coder.key_coder().get_impl()
        self._out_impl = post_grouped_coder.get_impl()
        self._states: dict[bytes, InMemoryUnmergedState] = {}
        self._keys: dict[bytes, Any] = {}

    def run(self, bundle: Bundle, input_watermark: Micros, output_watermark: Micros,
            processing_time: float) -> BundleSucceeded:
        self._clock.now = Timestamp.of(processing_time)
        in_wm = beam_time(input_watermark)
        out_wm = beam_time(output_watermark)
        panes: list[WindowedValue] = []
        touched: set[bytes] = set()
        for family, keys in bundle.timers.items():
            for key in keys:
                touched.add(key)
                panes += self._fire(key, in_wm)
        by_key: dict[bytes, list[WindowedValue]] = {}
        for payload in _payloads(bundle):
            for chunk in payload:
                for wv in self._in_impl.decode_all(chunk):
                    k, v = wv.value
                    encoded = self._key_impl.encode_nested(k)
                    self._keys.setdefault(encoded, k)
                    by_key.setdefault(encoded, []).append(wv.with_value(v))
        for encoded, values in by_key.items():
            touched.add(encoded)
            state = self._states.setdefault(encoded, InMemoryUnmergedState())
            for pane in self._driver.process_elements(state, values, out_wm, in_wm):
                panes.append(pane.with_value((self._keys[encoded], pane.value)))
        timers, holds = self._report(touched)
        produced = {}
        if panes:
            out = create_OutputStream()
            for pane in panes:
                self._out_impl.encode_to_stream(pane, out, True)
            buffer = beam_exec.ListBuffer(self._out_impl)
            buffer.append(out.get())
            produced[grouped_buffer(self._buffer)] = (buffer,)
        return BundleSucceeded(bundle.id, produced=produced, timers=timers, holds=holds)

    def _fire(self, encoded: bytes, in_wm: Timestamp) -> Iterable[WindowedValue]:
        state = self._states.get(encoded)
        if state is None:
            return []
        expired, _ = state.get_timers(clear=True, watermark=in_wm,
                                      processing_time=self._clock.now)
        panes = []
        for window, (name, domain, timestamp, _tag) in expired:
            for pane in self._driver.process_timer(window, name, domain, timestamp,
                                                   state, in_wm):
                panes.append(pane.with_value((self._keys[encoded], pane.value)))
        return panes

    def _report(self, keys: Iterable[bytes]
                ) -> tuple[tuple[TimerUpdate, ...], dict[Hashable, Micros]]:
        """Per key: the earliest timer of each domain, and the state's hold."""
        updates: list[TimerUpdate] = []
        holds: dict[Hashable, Micros] = {}
        for key in keys:
            state = self._states.get(key)
            earliest: dict[Any, Optional[Timestamp]] = {
                TimeDomain.WATERMARK: None, TimeDomain.REAL_TIME: None}
            if state is not None:
                for timers in state.timers.values():
                    for (_name, domain, _tag), ts in timers.items():
                        if domain in earliest and (earliest[domain] is None
                                                   or ts < earliest[domain]):
                            earliest[domain] = ts
            for domain, family in ((TimeDomain.WATERMARK, GROUPING_EVENT_TIMERS),
                                   (TimeDomain.REAL_TIME, GROUPING_PROCESSING_TIMERS)):
                ts = earliest[domain]
                if ts is None:
                    updates.append(TimerUpdate(family, key, None))
                else:
                    # An event-time firing's pane is no earlier than the timer
                    # (the state's hold covers earlier output timestamps).
                    fire_at = _engine_time(ts)
                    hold = fire_at if domain == TimeDomain.WATERMARK else MAX_TIMESTAMP
                    updates.append(TimerUpdate(family, key, key, fire_at=fire_at,
                                               hold=hold))
            hold = MAX_TIMESTAMP if state is None else _engine_time(state.get_earliest_hold())
            holds[key] = hold
            if state is not None and not state.timers and not state.state:
                del self._states[key]
                self._keys.pop(key, None)
        return tuple(updates), holds


def beam_time(micros: Micros) -> Timestamp:
    if micros >= MAX_TIMESTAMP:
        return BEAM_MAX
    if micros <= MIN_TIMESTAMP:
        return BEAM_MIN
    return Timestamp(micros=micros)


def _engine_time(ts: Timestamp) -> Micros:
    """Beam's bounds (whole milliseconds) map to the engine's."""
    if ts >= BEAM_MAX:
        return MAX_TIMESTAMP
    if ts <= BEAM_MIN:
        return MIN_TIMESTAMP
    return int(ts.micros)


def _payloads(bundle: Bundle) -> Iterable[Any]:
    for payloads in bundle.inputs.values():
        yield from payloads


GroupingFactory = Callable[[str], StreamingGroupByKey]


def grouping_for(context: beam_exec.FnApiRunnerExecutionContext,
                 group_buffer: str) -> StreamingGroupByKey:
    """The grouping of ``group:<GroupByKey id>``, with the GroupByKey's coders
    and windowing, as Beam's execution context builds its GroupingBuffer."""
    gbk_id = group_buffer.split(":", 1)[1]
    transform = context.pipeline_components.transforms[gbk_id]
    [input_pcoll] = list(transform.inputs.values())
    [output_pcoll] = list(transform.outputs.values())

    def coder(pcoll: str) -> Any:
        return context.pipeline_context.coders[
            context.safe_coders[context.data_channel_coders[pcoll]]]

    windowing = context.pipeline_context.windowing_strategies[
        context.safe_windowing_strategies[
            context.pipeline_components.pcollections[input_pcoll].windowing_strategy_id]]
    return StreamingGroupByKey(group_buffer, windowing, coder(input_pcoll),
                               coder(output_pcoll))
