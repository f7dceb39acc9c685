"""What every placement says about a worker process: its exit, its log, its output.

A worker's stdout and stderr are pipes read by an :class:`OutputPump` each:
the bytes go to the worker's log file (whose tail error messages quote) and,
line by line, to a console stream of this process (the driver's
``sys.stdout``/``sys.stderr`` for local workers; a Ray actor's, which Ray
streams to its driver). Reads are large (64 KiB) and whole lines are written
in one block per read, so a worker printing ~150k lines/s is not slowed by
its forwarding; lines of different workers never mix within a line.
"""
from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import threading
from typing import IO, Callable, Optional

_LOG = logging.getLogger(__name__)

#: Bytes asked of a pipe per read.
READ_BYTES = 1 << 16

#: A partial line longer than this is written as a line of its own.
MAX_LINE_BYTES = 1 << 20

#: One lock per console stream name, shared by every pump of this process:
#: a block of lines is written whole.
_CONSOLE_LOCKS = {"stdout": threading.Lock(), "stderr": threading.Lock()}


def describe_returncode(returncode: Optional[int]) -> str:
    """"running", "exit code 1", "killed by signal 9 (SIGKILL)"."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return "killed by signal %d (%s)" % (-returncode, name)
    return "exit code %d" % returncode


def read_log_tail(path: Optional[str], lines: int = 20) -> str:
    """The last ``lines`` lines of a worker's log file ("" when unreadable)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            tail = collections.deque(f, maxlen=lines)
    except OSError:
        return ""
    return b"".join(tail).decode("utf-8", "replace")


def prefix_lines(block: bytes, prefix: bytes) -> bytes:
    """``prefix`` before every line of ``block`` (whole lines, each ending in \\n)."""
    if not prefix or not block:
        return block
    return prefix + block[:-1].replace(b"\n", b"\n" + prefix) + b"\n"


def write_console(name: str, block: bytes) -> None:
    """Write whole lines to this process's ``sys.<name>`` (looked up now, so
    that a replaced stream, e.g. pytest's capture, gets them), under the
    stream's lock. Raises OSError when the stream is gone (a closed pipe)."""
    stream = getattr(sys, name, None)
    if stream is None or not block:
        return
    with _CONSOLE_LOCKS[name]:
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()   # what this process printed itself goes first
            buffer.write(block)
            buffer.flush()
        else:
            stream.write(block.decode("utf-8", "replace"))
            stream.flush()


class LogFile:
    """A worker's log file, written by its two pumps (whole lines each)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: Optional[IO[bytes]] = open(path, "ab")
        self._lock = threading.Lock()

    def write(self, block: bytes) -> None:
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(block)
                self._file.flush()
            except (OSError, ValueError) as exc:   # a full disk, a removed folder
                _LOG.debug("worker log %s: write failed: %r", self.path, exc)

    def reopen(self, path: str) -> None:
        """Write to ``path`` from now on (a worker reused by another job)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
            self.path = path
            self._file = open(path, "ab")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class OutputPump:
    """Copies one pipe of a worker to its log file and a console stream.

    ``console`` is "stdout" or "stderr" (this process's stream of that name),
    or None for the log file only. ``prefix()`` is asked once per read for
    the bytes put before each line (b"" for none). A console that fails (a
    closed pipe) is dropped with a debug message; the log file still gets
    everything, and the pipe is always drained, so the worker never blocks
    on a full pipe.
    """

    def __init__(self, name: str, pipe: IO[bytes], log: LogFile, console: Optional[str],
                 prefix: Callable[[], bytes] = lambda: b"",
                 write: Callable[[str, bytes], None] = write_console) -> None:
        self._pipe = pipe
        self._log = log
        self._console = console
        self._prefix = prefix
        self._write = write
        self._thread = threading.Thread(target=self._run, name="output-%s" % name,
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._pipe.fileno()
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, READ_BYTES)
                except OSError as exc:
                    _LOG.debug("reading a worker pipe failed: %r", exc)
                    chunk = b""
                if not chunk:
                    break
                end = chunk.rfind(b"\n")
                if end < 0:
                    pending += chunk
                    if len(pending) > MAX_LINE_BYTES:   # no newline for long: cut
                        self._emit(pending + b"\n")
                        pending = b""
                    continue
                block, pending = pending + chunk[:end + 1], chunk[end + 1:]
                self._emit(block)
            if pending:
                self._emit(pending + b"\n")
        finally:
            try:
                self._pipe.close()
            except OSError:
                pass

    def _emit(self, block: bytes) -> None:
        self._log.write(block)
        if self._console is None:
            return
        try:
            self._write(self._console, prefix_lines(block, self._prefix()))
        except (OSError, ValueError) as exc:   # the console was closed (| head)
            _LOG.debug("forwarding worker output to %s stopped: %r", self._console, exc)
            self._console = None

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the pipe is drained (the worker and its children exited)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
