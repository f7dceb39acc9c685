"""What a DoFn prints on GpuRunner reaches the driver, as on Beam's DirectRunner.

Each case runs a small pipeline program in a subprocess (its own stdout and
stderr, its own temp folder) and reads what it printed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PRINTING = """
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

def shout(x):
    print("stderr says %d" % x, file=sys.stderr)
    return x

with beam.Pipeline(options=PipelineOptions(
        ["--runner=beam_gpu_runner.GpuRunner", "--num_workers=2"])) as p:
    _ = p | beam.Create(range(5)) | beam.Map(shout) | beam.Map(print)
print("driver done")
"""

KILLED_ONCE = """
import os, signal, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

MARKER = sys.argv[1]

class KillWorkerOnce(beam.DoFn):
    def process(self, x):
        if x == 3 and not os.path.exists(MARKER):
            open(MARKER, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        yield x

with beam.Pipeline(options=PipelineOptions(
        ["--runner=beam_gpu_runner.GpuRunner", "--num_workers=2"])) as p:
    out = p | beam.Create(range(8)) | beam.ParDo(KillWorkerOnce())
    assert_that(out, equal_to(list(range(8))))
print("retried", os.path.exists(MARKER))
"""


def run_program(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess:
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, TMPDIR=str(temp), BEAM_GPU_RUNNER_LEASE_DIR=str(temp))
    done = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    leftovers = [n for n in os.listdir(temp) if n.startswith("beam-gpu-runner-workers-")]
    assert not leftovers, leftovers
    return done


def test_print_in_a_dofn_reaches_the_drivers_stdout_and_stderr(tmp_path):
    done = run_program(tmp_path, PRINTING)
    lines = done.stdout.splitlines()
    assert lines[-1] == "driver done"
    assert sorted(lines[:-1]) == ["0", "1", "2", "3", "4"]   # as the DoFn printed them
    said = [line for line in done.stderr.splitlines() if "stderr says" in line]
    assert sorted(line.rsplit(" ", 1)[1] for line in said) == ["0", "1", "2", "3", "4"]
    # prefixed with the worker once a job has several workers: "(worker_1) stderr says 3"
    assert all(line.startswith(("stderr says", "(worker_")) for line in said), said


def test_a_killed_and_retried_worker_leaves_no_tracebacks(tmp_path):
    done = run_program(tmp_path, KILLED_ONCE, str(tmp_path / "killed"))
    assert done.stdout.splitlines()[-1] == "retried True"
    assert "died: killed by signal 9" in done.stderr        # said once, by the runner
    assert "Traceback" not in done.stderr, done.stderr
    assert "RpcError" not in done.stderr, done.stderr
