"""Events into the element manager and instructions out of it (dask-style).

Payloads are opaque to the engine: the execution layer puts encoded element
buffers there, tests put strings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Optional, Union

from beam_gpu_runner.engine.timestamps import MIN_TIMESTAMP, Micros

Payload = Any


@dataclass(frozen=True)
class Bundle:
    """One unit of work for one stage."""

    id: str
    stage: str
    inputs: Mapping[str, tuple[Payload, ...]]     # data-input transform -> payloads
    timers: Mapping[str, tuple[Payload, ...]] = field(default_factory=dict)
    #: The earliest event time this work may still produce: holds the stage's
    #: output watermark while the bundle is pending or running.
    hold: Micros = MIN_TIMESTAMP
    attempt: int = 1
    #: Unprocessed input the stage handed back (SDF residual): its hold is the
    #: stage's own output estimate, not upstream data still to be read.
    residual: bool = False
    #: Dispatched while the job drains: splittable DoFns must truncate their
    #: restrictions (an unbounded source stops, bounded work finishes).
    drain: bool = False


@dataclass(frozen=True)
class TimerUpdate:
    """One timer a bundle set or cleared.

    Timers are identified by (family, key): a later update for the same key
    replaces an earlier one, across bundles, as Beam's timer semantics ask
    (the key is opaque here: the user key, tag and window, encoded).
    """

    family: str
    key: Hashable
    payload: Optional[Payload]   # None: the timer was cleared
    fire_at: Micros = MIN_TIMESTAMP   # event time, or processing time in micros
    hold: Micros = MIN_TIMESTAMP      # earliest output timestamp (watermark hold)


@dataclass(frozen=True)
class WindowedPayload:
    """Output for a BARRIER consumer that may be released early.

    The consumer gets it once its input watermark reaches ``release_at`` (the
    end of the payload's window); plain payloads wait for the end of input.
    """

    payload: Payload
    release_at: Micros


# ---- events ---------------------------------------------------------------

@dataclass(frozen=True)
class BundleSucceeded:
    bundle_id: str
    #: buffer -> payloads this bundle wrote (a payload per consumer bundle)
    produced: Mapping[str, tuple[Payload, ...]] = field(default_factory=dict)
    #: data-input transform -> payloads left unprocessed (SDF residuals, splits)
    residuals: Mapping[str, tuple[Payload, ...]] = field(default_factory=dict)
    residual_hold: Micros = MIN_TIMESTAMP
    #: processing time (seconds) before which the residual must not run
    resume_at: float = 0.0
    timers: tuple[TimerUpdate, ...] = ()
    #: key -> the earliest event time the stage's state for that key may still
    #: produce (a watermark hold from state); MAX_TIMESTAMP releases the key.
    holds: Mapping[Hashable, Micros] = field(default_factory=dict)


@dataclass(frozen=True)
class BundleFailed:
    bundle_id: str
    error: str
    #: True when the worker was lost (the bundle may run again elsewhere);
    #: False for a failure of user code (the job fails).
    retriable: bool
    cause: Optional[BaseException] = None


@dataclass(frozen=True)
class BundleSplit:
    """A running bundle gave up part of its input (a split it was asked for).

    ``primary`` is what the bundle still processes (its input for a retry);
    ``residual`` goes back to the stage as new work, held at
    ``residual_hold`` (the SDK's watermark estimate for a splittable DoFn's
    residual), or, when None, at the bundle's hold.
    """

    bundle_id: str
    primary: Mapping[str, tuple[Payload, ...]]
    residual: Mapping[str, tuple[Payload, ...]]
    residual_hold: Optional[Micros] = None


@dataclass(frozen=True)
class SplitRefused:
    """A running bundle could not be split (nearly done, or not splittable)."""

    bundle_id: str


@dataclass(frozen=True)
class Tick:
    """Processing time moved on (the driver calls this when it wakes)."""


@dataclass(frozen=True)
class Drain:
    """Stop reading, finish what was read (Dataflow's drain).

    From now on every bundle is dispatched with ``drain=True``; residuals
    waiting for their requested delay run at once, and so do those of bundles
    that were in flight, so that each source's remaining restriction is
    truncated now; a TestStream applies no more events and its watermark goes
    to MAX. Watermarks then reach MAX as the sources stop, windows and
    event-time timers fire, and processing-time timers of stages whose input
    is complete are dropped (as at the end of a TestStream: with no input left
    they could only re-arm forever). The job then ends with ``JobFinished``.
    """


Event = Union[BundleSucceeded, BundleFailed, BundleSplit, SplitRefused, Tick, Drain]


# ---- instructions -----------------------------------------------------------

@dataclass(frozen=True)
class RunBundle:
    bundle: Bundle


@dataclass(frozen=True)
class SplitBundle:
    """Ask a running bundle to keep ``fraction_of_remainder`` of what it has
    left (Beam's ProcessBundleSplitRequest); answered by ``BundleSplit`` or
    ``SplitRefused``."""

    bundle_id: str
    fraction_of_remainder: float


@dataclass(frozen=True)
class JobFinished:
    pass


@dataclass(frozen=True)
class JobFailed:
    stage: Optional[str]
    error: str
    cause: Optional[BaseException] = None


Instruction = Union[RunBundle, SplitBundle, JobFinished, JobFailed]
