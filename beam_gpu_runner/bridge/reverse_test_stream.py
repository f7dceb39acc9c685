"""ReverseTestStream's two stateful DoFns, made runnable on the SDK harness.

Beam's ``_TimingEventGenerator`` and ``_TestStreamFormatter``
(``apache_beam/testing/test_stream.py``) read a bag with
``next(state.read(), default)``. Only Beam's in-process DirectRunner hands a
DoFn an iterator there; Beam's SDK harness, which our workers run, returns an
iterable (``_ConcatIterable``), so the DoFn fails with ``TypeError: ... is
not an iterator``. The phase below swaps each of these DoFns, in its ParDo
payload only, for a subclass that passes the base DoFn's own ``process`` a
bag whose ``read()`` is ``iter(...)`` of the harness's read: Beam's logic runs
unchanged, nothing of Beam is patched, and other runners in the process are
untouched.

Two more things only an in-process runner gets away with: ``_TimingEventGenerator``
emits a ``TestStreamFileHeader`` proto that crosses a stage boundary (through
the runner-side PairWithTiming), and in the records format
``_TestStreamFormatter`` emits ``TestStreamFileRecord`` protos. Beam's protos
cannot be pickled (their classes claim a module, ``org.apache.beam.model...``,
that cannot be imported), and the SDK harness pickles elements of an ``Any``
PCollection, if only to sample their sizes. So the header travels as a
``FileHeader`` (its bytes) between our two DoFns, and our formatter registers
a pickle reducer for those two proto classes in the worker that runs it
(``setup``), never in the runner's process. And the generator's sampling
timer holds no watermark here (``unheld_timer_families``), as on the
DirectRunner, or the watermarks it reports would stay at its first element's.

The subclasses are pickled by reference: the workers that run them import
this module (GpuRunner's workers and a job server's own workers do; a
LOOPBACK client running the stage needs beam-gpu-runner installed). Keep the
imports here to what a worker has anyway; ``translations`` is for typing only.
"""
from __future__ import annotations

import copyreg
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_interactive_api_pb2, beam_runner_api_pb2
from apache_beam.testing import test_stream as beam_test_stream

if TYPE_CHECKING:
    from apache_beam.runners.portability.fn_api_runner import translations

_LOG = logging.getLogger(__name__)

_TimingEventGenerator = beam_test_stream._TimingEventGenerator
_TestStreamFormatter = beam_test_stream._TestStreamFormatter


class IteratorReads:
    """A bag state whose ``read()`` is an iterator; everything else is the bag's."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def read(self) -> Iterator[Any]:
        return iter(self._state.read())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


@dataclass(frozen=True)
class FileHeader:
    """A ``TestStreamFileHeader`` between our two DoFns, as picklable bytes."""

    data: bytes

    def to_proto(self) -> beam_interactive_api_pb2.TestStreamFileHeader:
        return beam_interactive_api_pb2.TestStreamFileHeader.FromString(self.data)


#: The proto classes ReverseTestStream emits, by name, for ``_proto_from_bytes``.
_PROTOS: dict[str, Any] = {
    "TestStreamFileHeader": beam_interactive_api_pb2.TestStreamFileHeader,
    "TestStreamFileRecord": beam_interactive_api_pb2.TestStreamFileRecord,
}


def _proto_from_bytes(name: str, data: bytes) -> Any:
    return _PROTOS[name].FromString(data)


def _reduce_proto(message: Any) -> tuple[Any, tuple[str, bytes]]:
    return _proto_from_bytes, (type(message).__name__, message.SerializeToString())


def register_proto_pickling() -> None:
    """Let pickle (the coder of an ``Any`` PCollection) take ReverseTestStream's
    protos. Process-wide: called in workers only (``TestStreamFormatter.setup``)."""
    for cls in _PROTOS.values():
        copyreg.pickle(cls, _reduce_proto)


class TimingEventGenerator(_TimingEventGenerator):
    """Beam's ``_TimingEventGenerator`` with an iterator bag read, emitting
    its header as a ``FileHeader`` (see above)."""

    def process(  # type: ignore[override]
            self, e: Any,
            timestamp: Any = beam.DoFn.TimestampParam,
            window: Any = beam.DoFn.WindowParam,
            timing_sampler: Any = beam.DoFn.TimerParam(_TimingEventGenerator.TIMING_SAMPLER),
            execute_once_state: Any = beam.DoFn.StateParam(
                _TimingEventGenerator.EXECUTE_ONCE_STATE)) -> Iterator[Any]:
        for out in super().process(e, timestamp, window, timing_sampler,
                                   IteratorReads(execute_once_state)):
            if isinstance(out, beam_interactive_api_pb2.TestStreamFileHeader):
                yield FileHeader(out.SerializeToString())
            else:
                yield out


class TestStreamFormatter(_TestStreamFormatter):
    """Beam's ``_TestStreamFormatter`` with an iterator bag read, taking the
    header as a ``FileHeader`` (see above)."""

    __test__ = False   # not a pytest class

    def setup(self) -> None:
        super().setup()
        register_proto_pickling()

    def process(  # type: ignore[override]
            self, e: Any,
            timestamp: Any = beam.DoFn.TimestampParam,
            prev_sample_time_state: Any = beam.DoFn.StateParam(
                _TestStreamFormatter.PREV_SAMPLE_TIME_STATE)) -> Iterable[Any]:
        key, (element, timing_info) = e
        if isinstance(element, FileHeader):
            e = (key, (element.to_proto(), timing_info))
        return super().process(e, timestamp, IteratorReads(prev_sample_time_state))


#: Beam's class -> ours. Exact types only: a user's subclass may read its bag
#: differently, and is left alone.
REPLACEMENTS: dict[type, Any] = {
    _TimingEventGenerator: TimingEventGenerator,
    _TestStreamFormatter: TestStreamFormatter,
}
#: Their bag names: only ParDos with one of these state specs are unpickled.
_STATE_NAMES = frozenset(["execute_once_state", "prev_sample_time_state"])


def _dofn_info(transform: beam_runner_api_pb2.PTransform,
               payload: beam_runner_api_pb2.ParDoPayload) -> Optional[tuple[Any, ...]]:
    """(fn, args, kwargs, side inputs, windowing) of a ParDo that may be one of
    ReverseTestStream's DoFns (it has one of their bags), else None."""
    if (payload.do_fn.urn != python_urns.PICKLED_DOFN_INFO
            or not _STATE_NAMES.intersection(payload.state_specs)):
        return None
    try:
        info: tuple[Any, ...] = pickler.loads(payload.do_fn.payload)
    except Exception:   # not ours to judge: the SDK reports what it cannot load
        _LOG.debug("Could not unpickle the DoFn of %s", transform.unique_name,
                   exc_info=True)
        return None
    return info


def replacement_payload(transform: beam_runner_api_pb2.PTransform) -> Optional[bytes]:
    """The ParDo payload with our DoFn, or None when ``transform`` is not one
    of ReverseTestStream's DoFns."""
    if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
        return None
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    info = _dofn_info(transform, payload)
    if info is None:
        return None
    fn, args, kwargs, si_tags_and_types, windowing = info
    ours = REPLACEMENTS.get(type(fn))
    if ours is None:
        return None
    replacement = ours.__new__(ours)
    replacement.__dict__.update(fn.__dict__)
    payload.do_fn.payload = pickler.dumps(
        (replacement, args, kwargs, si_tags_and_types, windowing))
    return payload.SerializeToString()


def unheld_timer_families(transform: beam_runner_api_pb2.PTransform,
                          payload: beam_runner_api_pb2.ParDoPayload) -> frozenset[str]:
    """Timer families of ``transform`` that must not hold its output watermark.

    Our ``TimingEventGenerator``'s sampling timer exists to observe the
    runner's clock and watermark. The SDK gives a processing-time timer the
    input element's timestamp as its hold (the first element's, then the
    firing timer's, forever), and GpuRunner honours such holds, so the
    watermark the sampler reports would stay at the first element's
    timestamp. Beam's DirectRunner, which ReverseTestStream was written for
    and whose results Beam's tests expect, holds no watermark for timers; for
    this one family neither do we (Beam Java's ``withNoOutputTimestamp``).
    """
    if not payload.timer_family_specs:
        return frozenset()
    info = _dofn_info(transform, payload)
    if info is None or not isinstance(info[0], TimingEventGenerator):
        return frozenset()
    return frozenset([_TimingEventGenerator.TIMING_SAMPLER.name])


def reverse_test_stream_dofns(stages: Iterable[translations.Stage],
                              context: translations.TransformContext
                              ) -> Iterator[translations.Stage]:
    """Fusion phase: swap ReverseTestStream's DoFns for ours (see the module
    docstring). Stage transforms are the pipeline's own protos, edited in place."""
    for stage in stages:
        for transform in stage.transforms:
            new_payload = replacement_payload(transform)
            if new_payload is not None:
                _LOG.debug("ReverseTestStream: %s runs with iterator bag reads",
                           transform.unique_name)
                transform.spec.payload = new_payload
        yield stage
