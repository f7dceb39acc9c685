"""The module worker processes run: ``python -m beam_gpu_runner.placement.harness``.

Beam's SDK harness with ~1 MB output messages (``bridge.harness`` says why);
kept as its own tiny module so that a worker imports nothing else first.

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
from typing import TextIO

MODULE = __name__


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
    from beam_gpu_runner.bridge.harness import run_harness

    run_harness(argv)


if __name__ == "__main__":
    main(sys.argv)
