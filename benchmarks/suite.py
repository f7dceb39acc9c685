"""Beam's FnApiRunnerTest on FnApiRunner and on GpuRunner, side by side.

The suite is Beam's own: ``FnApiRunnerTest`` from the installed Beam on
FnApiRunner, and ``tests/runner/test_beam_fn_runner_suite.py`` (the same class
subclassed to run on GpuRunner) on ours, each in a pytest subprocess, run
one after the other. The three event-time timer tests Beam skips on
FnApiRunner (apache/beam#35168; 14 s of real time each on GpuRunner) are
deselected on both, so both run the same tests; the time compared is pytest's
own session time ("... in 38.08s").
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

#: Tests Beam skips on FnApiRunner (apache/beam#35168): deselected on both.
DESELECT = "not et_timer"

_SUMMARY = re.compile(r"(\d+) passed.* in ([\d.]+)s")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class SuiteRun:
    runner: str
    passed: int
    session_s: float     # pytest's own "in N s"
    wall_s: float        # the subprocess, imports included

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _target(runner: str) -> str:
    if runner == "gpu":
        return os.path.join(_REPO_ROOT, "tests", "runner", "test_beam_fn_runner_suite.py")
    from apache_beam.runners.portability.fn_api_runner import fn_runner_test
    return "%s::FnApiRunnerTest" % fn_runner_test.__file__


def run_suite(runner: str, select: str = "") -> SuiteRun:
    """One pytest session of the suite on ``runner`` ("gpu" or "direct")."""
    expression = DESELECT + (" and (%s)" % select if select else "")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-k", expression, _target(runner)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=_REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    match = _SUMMARY.search(tail[0])
    if proc.returncode != 0 or match is None:
        raise RuntimeError("FnApiRunnerTest on %s failed (exit %d): %s\n%s"
                           % (runner, proc.returncode, tail[0], proc.stdout[-3000:]))
    return SuiteRun(runner=runner, passed=int(match.group(1)),
                    session_s=float(match.group(2)), wall_s=wall)
