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

A reusable worker (``REUSE_FD_ENV`` set, see ``placement/warm.py``) does not
exit when its job says goodbye: it writes ``idle`` to that descriptor and
reads one line from stdin, the JSON of the next job's environment
(``{"env": {...}}``, all of it: it replaces ours), then runs Beam's harness
again for that job, in the same interpreter (Beam and the user's modules already imported).
End of stdin ends it.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import BinaryIO, Callable, MutableMapping, TextIO

MODULE = __name__

#: The descriptor a reusable worker writes "idle" to between jobs.
REUSE_FD_ENV = "BEAM_GPU_RUNNER_REUSE_FD"

IDLE = b"idle\n"


class _UntilFnApiLogging(logging.Filter):
    """Passes records only while the root logger has no Fn API log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(_is_fn_api_handler(h) for h in logging.getLogger().handlers)


def _is_fn_api_handler(handler: logging.Handler) -> bool:
    return type(handler).__name__ == "FnApiLogRecordHandler"


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


def drop_fn_api_log_handlers() -> None:
    """Beam closes its Fn API log handler when the harness ends but leaves it
    on the root logger; the next job's harness adds its own."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if _is_fn_api_handler(handler):
            root.removeHandler(handler)


def apply_env(line: bytes, environ: MutableMapping[str, str]) -> None:
    """Apply one job's environment line (see the module docstring)."""
    env = json.loads(line)["env"]
    environ.clear()
    environ.update(env)


def serve_jobs(run: Callable[[], None], commands: BinaryIO, reuse_fd: int,
               environ: MutableMapping[str, str]) -> None:
    """Run ``run`` for the first job, then say idle on ``reuse_fd`` and run
    it again for each environment line read from ``commands``, until their end."""
    while True:
        run()
        drop_fn_api_log_handlers()
        os.write(reuse_fd, IDLE)
        line = commands.readline()
        if not line.strip():   # end of stdin: the runner is done with us
            return
        apply_env(line, environ)


def main(argv: list[str]) -> None:
    _setup_output(sys.stdout, sys.stderr)   # before Beam's imports log anything
    from beam_gpu_runner.bridge.harness import run_harness

    fd = os.environ.pop(REUSE_FD_ENV, None)
    if not fd:
        run_harness(argv)
        return
    serve_jobs(lambda: run_harness(argv), sys.stdin.buffer, int(fd), os.environ)


if __name__ == "__main__":
    main(sys.argv)
