"""A one-line progress display for a batch run in a terminal, in the manner of
Ray Data's progress bars::

    stages 3/7 done | 12,345 elements in | running: Classify (2 bundles) | 4.2 s

    progress = show_progress(result.status)     # stderr is a terminal: draws
    ...                                         # the job runs
    progress.stop()                             # clears the line

It draws only when the stream is a terminal (a log file or a pipe gets
nothing), redraws in place (carriage return, erase line), cuts the line to the
terminal's width and clears it at the end, so the run's own output is left as
it was. A status callable that raises is skipped until the next redraw.
"""
from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import Callable, Optional, Protocol, TextIO

from beam_gpu_runner.status import JobStatus
from beam_gpu_runner.ui.api import stage_done

_LOG = logging.getLogger(__name__)

_ERASE = "\r\x1b[K"


class Stoppable(Protocol):
    def stop(self) -> None:
        """Stop drawing and clear the line."""


class _NoProgress:
    def stop(self) -> None:
        pass


def progress_text(job: JobStatus, now: Optional[float] = None) -> str:
    """The progress line for ``job`` (without terminal control characters)."""
    total = len(job.stages)
    done = sum(1 for s in job.stages if stage_done(s))
    elements = sum(s.elements_in for s in job.stages)
    parts = ["stages %d/%d done" % (done, total), "{:,} elements in".format(elements)]
    running = [s for s in job.stages if s.bundles_running > 0]
    if running:
        bundles = sum(s.bundles_running for s in running)
        names = ", ".join(s.label or s.name for s in running[:2])
        if len(running) > 2:
            names += " +%d" % (len(running) - 2)
        parts.append("running: %s (%d bundle%s)" % (names, bundles,
                                                    "" if bundles == 1 else "s"))
    retried = sum(s.bundles_retried for s in job.stages)
    if retried:
        parts.append("%d retried" % retried)
    end = job.end_time if job.end_time is not None else (
        time.time() if now is None else now)
    parts.append("%.1f s" % max(0.0, end - job.start_time))
    return " | ".join(parts)


class ProgressLine:
    """Redraws ``progress_text(status())`` every ``interval_s`` on ``stream``."""

    def __init__(self, status: Callable[[], JobStatus], stream: TextIO,
                 interval_s: float = 0.5) -> None:
        self._status = status
        self._stream = stream
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._drawn = False
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> "ProgressLine":
        self._thread.start()
        return self

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((100, 24)).columns - 1)

    def draw(self) -> None:
        try:
            text = progress_text(self._status())
        except Exception as exc:   # the job is being torn down: skip this redraw
            _LOG.debug("progress: status() failed: %s", exc)
            return
        width = self._width()
        if len(text) > width:
            text = text[:width - 1] + "…"
        with self._lock:
            if self._stop.is_set():
                return
            try:
                self._stream.write(_ERASE + text)
                self._stream.flush()
                self._drawn = True
            except (OSError, ValueError):   # the terminal went away
                self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.draw()
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            if self._drawn:
                try:
                    self._stream.write(_ERASE)
                    self._stream.flush()
                except (OSError, ValueError):
                    pass
                self._drawn = False
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def show_progress(status: Callable[[], JobStatus], stream: Optional[TextIO] = None,
                  interval_s: float = 0.5) -> Stoppable:
    """Draw a progress line for the job ``status()`` describes, on ``stream``
    (default stderr) when it is a terminal; ``stop()`` clears it."""
    out = sys.stderr if stream is None else stream
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return _NoProgress()
    return ProgressLine(status, out, interval_s).start()


__all__ = ["ProgressLine", "Stoppable", "progress_text", "show_progress"]
