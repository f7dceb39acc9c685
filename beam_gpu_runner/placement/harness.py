"""The SDK harness our worker processes run: Beam's ``sdk_worker_main``, with
a smaller output flush size.

Beam's harness sends a bundle's output when 10 MB have accumulated or the
bundle ends, so a runner sees nothing of a big bundle until late. Sent in
~1 MB messages, output reaches the runner while the bundle runs, and the
runner can start on it (``execution.arriving``: GroupByKey input is grouped
as it arrives). The harness flushes only between elements (Beam calls
``maybe_flush`` after each one), so a message still holds whole elements.

This is the one place where our workers differ from Beam's plain harness
(DESIGN.md asks for it unchanged; BUILD_NOTES.md records why this setting
is changed). Everything else, and the processing of every element, is Beam's.
Should a Beam version lack the class this rebinds, the harness runs
unchanged (with Beam's 10 MB messages) after a warning.

Two settings of the process, not of Beam: stdout and stderr are line
buffered (the runner forwards them to its own console line by line, so a
``print`` shows when it happens, not when 8 KiB have gathered), and log
records go to the runner over the Fn API only. Before Beam's Fn API log
handler exists, only errors are written to stderr; without this, Beam's
imports would make ``logging.warning`` attach a stderr handler to the root
logger, and every record of the worker would reach the runner's console
twice (once relayed, once as stderr).
"""
from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

_LOG = logging.getLogger(__name__)

#: Output is sent to the runner in Data messages of about this size.
OUTPUT_MESSAGE_BYTES = 1 << 20

MODULE = __name__


def _install_flush_size(size: int) -> None:
    from apache_beam.runners.worker import data_plane

    base = data_plane.SizeBasedBufferingClosableOutputStream
    if getattr(base, "_beam_gpu_runner_flush_size", None) == size:
        return

    class _Sized(base):  # type: ignore[valid-type, misc]
        _beam_gpu_runner_flush_size = size

        def __init__(self, close_callback: Any = None, flush_callback: Any = None,
                     size_flush_threshold: int = size, **kwargs: Any) -> None:
            super().__init__(close_callback, flush_callback, size_flush_threshold, **kwargs)

    # ClosableOutputStream.create looks the class up by name when called.
    setattr(data_plane, "SizeBasedBufferingClosableOutputStream", _Sized)


class _UntilFnApiLogging(logging.Filter):
    """Passes records only while the root logger has no Fn API log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(type(h).__name__ == "FnApiLogRecordHandler"
                       for h in logging.getLogger().handlers)


def _setup_output(stdout: TextIO, stderr: TextIO) -> None:
    """Line-buffered stdio; errors to stderr until Beam's log handler exists."""
    for stream in (stdout, stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    early = logging.StreamHandler(stderr)
    early.setLevel(logging.ERROR)
    early.addFilter(_UntilFnApiLogging())
    early.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(early)


def main(argv: list[str]) -> None:
    _setup_output(sys.stdout, sys.stderr)   # before Beam's imports log anything
    from apache_beam.runners.worker import sdk_worker_main

    try:
        _install_flush_size(OUTPUT_MESSAGE_BYTES)
    except (AttributeError, TypeError) as exc:   # a Beam without that class
        _LOG.warning("beam_gpu_runner harness: keeping Beam's output flush size "
                     "(could not set %d bytes: %s)", OUTPUT_MESSAGE_BYTES, exc)
    sdk_worker_main.main(argv)


if __name__ == "__main__":
    main(sys.argv)
