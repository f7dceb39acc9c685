"""The main job as a person runs it: ``python -m beam_gpu_runner.pipelines.mnist_streaming``
in a process of its own (its own session, temp folder and lease folder), on
GpuRunner: what its console shows, and how it stops on Ctrl-C and SIGTERM.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import psutil
import pytest

from beam_gpu_runner.transforms.sink import count_rows

pytestmark = pytest.mark.slow

#: Bounds against hangs only; nothing here asserts on durations.
LIMIT_S = 240.0

WINDOW = re.compile(r"^(\(worker_\d+\) )?window \d\d:\d\d:\d\d-\d\d:\d\d:\d\d: \d+ images, "
                    r"accuracy [\d.]+%, \d+ images/s, latency mean [\d.]+ ms max [\d.]+ ms$")
SUMMARY = re.compile(r"^summary: (\d+) images, accuracy [\d.]+% \((\d+) correct\)")


def _popen_with_sigint(*args: Any, **kwargs: Any) -> "subprocess.Popen[bytes]":
    """Popen with SIGINT at its default in the child, as a shell starts a
    foreground job: a suite started in the background (`cmd &`) ignores SIGINT,
    and an ignored signal stays ignored across exec, so the demo would never
    see the test's Ctrl-C. A handler (unlike SIG_IGN) is reset by exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(*args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


class Demo:
    """The demo in a subprocess; its stderr read line by line as it comes."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.temp = tmp_path / "tmp"
        self.temp.mkdir()
        env = dict(os.environ, TMPDIR=str(self.temp), BEAM_GPU_RUNNER_LEASE_DIR=str(self.temp))
        self.stdout_path = tmp_path / "stdout.txt"
        self.proc = _popen_with_sigint(
            [sys.executable, "-X", "faulthandler", "-m",
             "beam_gpu_runner.pipelines.mnist_streaming", *args],
            stdout=open(self.stdout_path, "wb"), stderr=subprocess.PIPE, env=env,
            start_new_session=True)   # a terminal's foreground group: signals reach it only
        self.lines: list[str] = []
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, pattern: "re.Pattern[str]") -> str:
        deadline = time.monotonic() + LIMIT_S
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no line matching %r in %.0f s; the demo's threads:\n%s"
                                     % (pattern.pattern, LIMIT_S, self.stacks())) from None
            assert line is not None, "the demo ended first:\n" + "\n".join(self.lines)
            self.lines.append(line)
            if pattern.search(line):
                return line

    def stacks(self) -> str:
        """The demo's stderr so far and, from faulthandler, its threads' stacks."""
        self.proc.send_signal(signal.SIGABRT)   # faulthandler dumps every thread
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        lines = []
        while True:
            try:
                line = self._queue.get(timeout=10)
            except queue.Empty:
                break
            if line is None:
                break
            lines.append(line)
        return "\n".join(self.lines + lines)

    def finish(self) -> int:
        try:
            returncode = self.proc.wait(LIMIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError("the demo did not end in %.0f s; its threads:\n%s"
                                 % (LIMIT_S, self.stacks())) from None
        while True:
            line = self._queue.get(timeout=LIMIT_S)
            if line is None:
                return returncode
            self.lines.append(line)

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def leftovers(self) -> list[str]:
        return [n for n in os.listdir(self.temp) if n.startswith("beam-gpu-runner-workers-")]

    def leases(self) -> list[dict]:
        path = self.temp / "beam-gpu-runner-leases.json"
        return json.loads(path.read_text())["leases"] if path.exists() else []


def test_a_run_shows_only_window_lines_and_the_summary_and_prints_every_prediction(tmp_path):
    demo = Demo(tmp_path, "--num_images=1000")
    assert demo.finish() == 0, "\n".join(demo.lines)
    others = [line for line in demo.lines if not WINDOW.match(line)]
    assert len(others) == 1 and SUMMARY.match(others[0]), "\n".join(demo.lines)
    assert SUMMARY.match(others[0]).group(1) == "1000"   # type: ignore[union-attr]
    assert len(demo.lines) > 1                              # and window lines
    predictions = demo.stdout_path.read_text().splitlines()
    assert sorted(int(line.split(",")[0]) for line in predictions) == list(range(1000))
    assert not demo.leftovers()


@pytest.mark.parametrize("sig, num_images, said, code", [
    (signal.SIGINT, 1000000, "interrupted: the job was cancelled", 130),
    (signal.SIGTERM, 1000000, "terminated: the job was cancelled", 143),
    (signal.SIGINT, 0, "interrupted: the job was cancelled", 130),   # streaming
], ids=["ctrl-c", "sigterm", "ctrl-c-streaming"])
def test_a_stop_cancels_the_job_and_the_summary_counts_the_sink(tmp_path, sig, num_images,
                                                                 said, code):
    out = tmp_path / "predictions"
    demo = Demo(tmp_path, "--num_images=%d" % num_images, "--output=%s" % out)
    demo.wait_for_line(WINDOW)
    workers = demo.workers()
    assert workers, "no worker processes while the job runs"
    os.killpg(demo.proc.pid, sig)   # what a terminal's Ctrl-C does
    assert demo.finish() == code, "\n".join(demo.lines)
    text = "\n".join(demo.lines)
    assert [line for line in demo.lines if "cancelled" in line] == [said], text
    assert "Traceback" not in text and "RpcError" not in text and "CRITICAL" not in text
    summaries = [m for m in map(SUMMARY.match, demo.lines) if m]
    assert len(summaries) == 1, text
    written = count_rows(str(out))
    assert int(summaries[0].group(1)) == written.rows > 0
    assert int(summaries[0].group(2)) == written.correct
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "workers outlived the demo: %s" % alive
    assert not demo.leftovers()
    assert demo.leases() == []
