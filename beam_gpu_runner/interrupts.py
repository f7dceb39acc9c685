"""SIGTERM as a clean stop, for programs that run a pipeline as their main loop.

Python's default SIGTERM ends the process at once: no ``finally``, no
``atexit``. A job's workers would then be left to notice on their own, its
temp folder would stay and its GPU leases would wait for the next run to
reclaim them. Inside :func:`sigterm_interrupts` SIGTERM instead raises
:class:`Terminated`, a ``KeyboardInterrupt``, in the main thread: the program
stops exactly as on Ctrl-C (``GpuRunner`` cancels a batch job it waits for,
the pipelines print their summary, cleanup and ``atexit`` run).

Library code never installs this behind the user's back: the command-line
entry points (``beam-gpu-runner run``, the MNIST pipelines' ``main``) do.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator, Optional


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while :func:`sigterm_interrupts` was active."""


def _raise_terminated(signum: int, frame: Optional[FrameType]) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Terminated` in the main thread.

    Does nothing when called off the main thread (only it may set handlers).
    The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_of(interrupt: BaseException) -> signal.Signals:
    """The signal an interrupt stands for: SIGTERM for Terminated, else SIGINT."""
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT


def exit_code(interrupt: BaseException) -> int:
    """The shell's exit code for a process stopped by that signal (130, 143)."""
    return 128 + int(signal_of(interrupt))


__all__ = ["Terminated", "exit_code", "signal_of", "sigterm_interrupts"]
