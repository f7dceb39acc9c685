"""Stages the runner runs itself, on the driver thread, behind one protocol.

Some stages have no SDK implementation, or need the runner's view of time:

* a **streaming GroupByKey** (``StreamingGroupByKey``): Beam's trigger driver,
  one state per key, as Beam's DirectRunner runs ``_StreamingGroupAlsoByWindow``:
  elements and fired timers in, panes out, and per key the earliest event-
  and processing-time timer and the state's watermark hold;
* **PairWithTiming** (ReverseTestStream's primitive, ``PairWithTimingStage``):
  each element paired with ``TimingInfo(processing time, output watermark)``.

Both implement ``RunnerStage``; ``runner_stages`` builds the registry of a job's
runner-side stages from its graph's stage names (``preprocess.stage_graph``
names them). A TestStream is not a stage: its script drives the engine
(``bridge.test_stream_events``).
"""
from __future__ import annotations

from typing import Any, Hashable, Iterable, Iterator, Mapping, Optional, Protocol

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.testing.test_stream import TimingInfo
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.trigger import InMemoryUnmergedState, create_trigger_driver
from apache_beam.utils.timestamp import MAX_TIMESTAMP as BEAM_MAX
from apache_beam.utils.timestamp import MIN_TIMESTAMP as BEAM_MIN
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.bridge.buffers import BufferId, Chunks
from beam_gpu_runner.bridge.context import JobContext
from beam_gpu_runner.engine.events import Bundle, BundleSucceeded, TimerUpdate
from beam_gpu_runner.engine.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP, Micros, StageTime

#: A streaming GroupByKey's timer families (Beam's trigger driver: event and
#: processing time), as the engine's graph declares them.
GROUPING_EVENT_TIMERS = "event"
GROUPING_PROCESSING_TIMERS = "processing"


class RunnerStage(Protocol):
    def run(self, bundle: Bundle, time: StageTime) -> BundleSucceeded:
        """The bundle's outcome; raises for bad data (the job fails naming it)."""


def beam_time(micros: Micros) -> Timestamp:
    if micros >= MAX_TIMESTAMP:
        return BEAM_MAX
    if micros <= MIN_TIMESTAMP:
        return BEAM_MIN
    return Timestamp(micros=micros)


def engine_time(ts: Timestamp) -> Micros:
    """Beam's bounds (whole milliseconds) map to the engine's."""
    if ts >= BEAM_MAX:
        return MAX_TIMESTAMP
    if ts <= BEAM_MIN:
        return MIN_TIMESTAMP
    return int(ts.micros)


def _chunks_of(bundle: Bundle) -> Iterator[bytes]:
    for payloads in bundle.inputs.values():
        for payload in payloads:
            yield from payload


def _encoded(values: Iterable[WindowedValue], impl: Any) -> Chunks:
    out = create_OutputStream()
    count = 0
    for value in values:
        impl.encode_to_stream(value, out, True)
        count += 1
    return Chunks.of([out.get()], impl, count)


class _Clock:
    """The trigger driver's processing time, set before each bundle."""

    def __init__(self) -> None:
        self.now = Timestamp(0)

    def time(self) -> Timestamp:
        return self.now


class StreamingGroupByKey:
    """One GroupByKey's keyed trigger state; see the module docstring."""

    def __init__(self, buffer: BufferId, windowing: Windowing,
                 pre_grouped_coder: Any, post_grouped_coder: Any) -> None:
        self._out = str(buffer.grouped())
        self._clock = _Clock()
        self._driver = create_trigger_driver(windowing, clock=self._clock)
        self._in_impl = pre_grouped_coder.get_impl()
        self._key_impl = pre_grouped_coder.key_coder().get_impl()
        self._out_impl = post_grouped_coder.get_impl()
        self._states: dict[bytes, InMemoryUnmergedState] = {}
        self._keys: dict[bytes, Any] = {}

    def run(self, bundle: Bundle, time: StageTime) -> BundleSucceeded:
        self._clock.now = Timestamp.of(time.processing_time)
        in_wm = beam_time(time.input_watermark)
        out_wm = beam_time(time.output_watermark)
        panes: list[WindowedValue] = []
        touched: set[bytes] = set()
        for keys in bundle.timers.values():
            for key in keys:
                touched.add(key)
                panes += self._fire(key, in_wm)
        by_key: dict[bytes, list[WindowedValue]] = {}
        for chunk in _chunks_of(bundle):
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
        produced = {self._out: (_encoded(panes, self._out_impl),)} if panes else {}
        return BundleSucceeded(bundle.id, produced=produced, timers=timers, holds=holds)

    def _fire(self, encoded: bytes, in_wm: Timestamp) -> list[WindowedValue]:
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
                    fire_at = engine_time(ts)
                    hold = fire_at if domain == TimeDomain.WATERMARK else MAX_TIMESTAMP
                    updates.append(TimerUpdate(family, key, key, fire_at=fire_at,
                                               hold=hold))
            holds[key] = (MAX_TIMESTAMP if state is None
                          else engine_time(state.get_earliest_hold()))
            if state is not None and not state.timers and not state.state:
                del self._states[key]
                self._keys.pop(key, None)
        return tuple(updates), holds


class PairWithTimingStage:
    """Each element paired with the runner's timing (Beam's DirectRunner's
    ``_PairWithTimingEvaluator``): processing time is the engine's (the test
    clock under a TestStream), the watermark the stage's output watermark."""

    def __init__(self, out_buffer: BufferId, in_impl: Any, out_impl: Any) -> None:
        self._out = str(out_buffer)
        self._in_impl = in_impl
        self._out_impl = out_impl

    def run(self, bundle: Bundle, time: StageTime) -> BundleSucceeded:
        timing = TimingInfo(Timestamp.of(time.processing_time),
                            beam_time(time.output_watermark))
        paired = (wv.with_value((wv.value, timing))
                  for chunk in _chunks_of(bundle) for wv in self._in_impl.decode_all(chunk))
        return BundleSucceeded(bundle.id,
                               produced={self._out: (_encoded(paired, self._out_impl),)})


def streaming_group_by_key(context: JobContext, buffer: BufferId) -> StreamingGroupByKey:
    """The grouping of ``buffer`` (``group:<GroupByKey id>``), with the
    GroupByKey's coders and windowing, as Beam's execution context groups it."""
    input_pcoll, output_pcoll = context.gbk_pcollections(buffer)
    return StreamingGroupByKey(buffer, context.windowing(input_pcoll),
                               context.channel_coder(input_pcoll),
                               context.channel_coder(output_pcoll))


def pair_with_timing(context: JobContext, transform_id: str,
                     out_buffer: BufferId) -> PairWithTimingStage:
    transform = context.components.transforms[transform_id]
    [input_pcoll] = list(transform.inputs.values())
    [output_pcoll] = list(transform.outputs.values())
    return PairWithTimingStage(
        out_buffer, context.channel_coder(input_pcoll, safe=False).get_impl(),
        context.channel_coder(output_pcoll, safe=False).get_impl())


def runner_stages(context: JobContext, groupings: Mapping[str, BufferId],
                  timings: Mapping[str, tuple[str, BufferId]]) -> dict[str, RunnerStage]:
    """The registry: stage name -> the runner-side stage that runs it.

    ``groupings``: grouping stage -> its GROUP buffer (streaming jobs);
    ``timings``: timing stage -> (PairWithTiming transform id, output buffer).
    """
    stages: dict[str, RunnerStage] = {
        name: streaming_group_by_key(context, buffer) for name, buffer in groupings.items()}
    stages.update({name: pair_with_timing(context, transform_id, out)
                   for name, (transform_id, out) in timings.items()})
    return stages


__all__ = ["GROUPING_EVENT_TIMERS", "GROUPING_PROCESSING_TIMERS", "PairWithTimingStage",
           "RunnerStage", "StageTime", "StreamingGroupByKey", "runner_stages"]
