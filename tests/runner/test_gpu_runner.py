"""GpuRunner end to end: real worker processes on loopback."""
from __future__ import annotations

import os
import signal
import sys
import time

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.testing.util import assert_that, equal_to

from beam_gpu_runner.execution.errors import JobFailedError
from beam_gpu_runner.placement.local import LocalPlacement
from beam_gpu_runner.runner import GpuRunner

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_workers")]


def pipeline(*args: str, runner: GpuRunner | None = None) -> beam.Pipeline:
    return beam.Pipeline(runner=runner or GpuRunner(),
                         options=PipelineOptions(["--num_workers=2", *args]))


def test_bundles_run_in_worker_processes_not_in_the_driver():
    driver = os.getpid()
    with pipeline() as p:
        in_driver = (p | beam.Create(range(20))
                     | beam.Map(lambda _, d=driver: os.getpid() == d)
                     | beam.Distinct())
        assert_that(in_driver, equal_to([False]))


def test_runner_resolves_by_dotted_name():
    options = PipelineOptions(["--runner=beam_gpu_runner.GpuRunner", "--num_workers=1"])
    with beam.Pipeline(options=options) as p:
        assert_that(p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 10),
                    equal_to([10, 20, 30]))


def test_multiple_outputs_side_inputs_cogbk_combine_flatten_and_metrics():
    class Split(beam.DoFn):
        def process(self, x):
            Metrics.counter("test", "seen").inc()
            Metrics.distribution("test", "size").update(x)
            yield beam.pvalue.TaggedOutput("even" if x % 2 == 0 else "odd", x)

    p = pipeline()
    nums = p | "nums" >> beam.Create(range(10))
    parts = nums | beam.ParDo(Split()).with_outputs("even", "odd")
    total = nums | beam.CombineGlobally(sum)
    shifted = parts.even | beam.Map(lambda x, t: x + t, t=beam.pvalue.AsSingleton(total))
    joined = ({"e": parts.even | "ke" >> beam.Map(lambda x: (x % 3, x)),
               "o": parts.odd | "ko" >> beam.Map(lambda x: (x % 3, x))}
              | beam.CoGroupByKey()
              | beam.MapTuple(lambda k, d: (k, sorted(d["e"]), sorted(d["o"]))))
    both = (parts.even, parts.odd) | beam.Flatten() | beam.combiners.Count.Globally()
    assert_that(shifted, equal_to([45, 47, 49, 51, 53]), label="shifted")
    assert_that(joined, equal_to([(0, [0, 6], [3, 9]), (1, [4], [1, 7]),
                                  (2, [2, 8], [5])]), label="joined")
    assert_that(both, equal_to([10]), label="count")
    result = p.run()
    assert result.wait_until_finish() == PipelineState.DONE
    counters = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
    assert sum(c.committed for c in counters) == 10
    dists = result.metrics().query(MetricsFilter().with_name("size"))["distributions"]
    assert sum(d.committed.sum for d in dists) == 45


class KillWorkerOnce(beam.DoFn):
    """Kills its own worker process the first time it sees element 3."""

    def __init__(self, marker: str) -> None:
        self._marker = marker

    def process(self, x):
        if x == 3 and not os.path.exists(self._marker):
            with open(self._marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        yield x


def test_killed_worker_bundle_is_retried_without_loss_or_duplicates(tmp_path):
    marker = str(tmp_path / "killed")
    with pipeline() as p:
        out = (p | beam.Create(range(8)) | beam.ParDo(KillWorkerOnce(marker))
               | beam.Map(lambda x: x * 2))
        assert_that(out, equal_to([x * 2 for x in range(8)]))
        assert_that(out | beam.combiners.Count.Globally(), equal_to([8]), label="count")
    assert os.path.exists(marker), "the DoFn never killed its worker"


def test_always_dying_worker_fails_after_max_attempts(tmp_path):
    def die(x):
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(JobFailedError, match=r"failed 2 times \(max_bundle_attempts=2\)"):
        with pipeline("--max_bundle_attempts=2") as p:
            _ = p | beam.Create([1]) | beam.Map(die)


def test_user_exception_names_stage_and_step():
    def explode(x):
        raise ZeroDivisionError("user code divided %s by zero" % x)

    with pytest.raises(JobFailedError) as info:
        with pipeline() as p:
            _ = p | beam.Create([7]) | "ExplodeStep" >> beam.Map(explode)
    message = str(info.value)
    assert "ZeroDivisionError: user code divided 7 by zero" in message
    assert "[while running 'ExplodeStep']" in message           # the step
    assert "[GpuRunner: failed in stage 'Create/" in message     # the stage
    # The failed job kept its workers' logs, and says where.
    kept = message.split("[worker logs kept in ")[1].rstrip("]")
    assert os.path.isdir(kept) and any(name.endswith(".log") for name in os.listdir(kept))
    import shutil
    shutil.rmtree(kept)


class NeverConnects(LocalPlacement):
    """Starts a process that never speaks the Fn API."""

    def start_worker(self, launch):
        import subprocess
        from beam_gpu_runner.placement.local import LocalProcess
        log = open(os.path.join(self._log_dir, "%s.log" % launch.worker_id), "ab")
        popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 stdout=log, stderr=subprocess.STDOUT)
        return LocalProcess(launch.worker_id, popen, log.name, log)


def test_worker_that_never_connects_fails_the_job_within_the_timeout():
    start = time.monotonic()
    with pytest.raises(JobFailedError, match=r"did not connect .* within 2\.0s"):
        with pipeline("--worker_start_timeout=2",
                      runner=GpuRunner(placement=NeverConnects())) as p:
            _ = p | beam.Create([1]) | beam.Map(lambda x: x)
    assert time.monotonic() - start < 60


def test_cancel_ends_a_running_job_and_its_workers():
    def slow(x):
        time.sleep(0.2)
        return x

    p = pipeline("--streaming")
    _ = p | beam.Create(range(10_000)) | beam.Map(slow)
    result = p.run()
    deadline = time.monotonic() + 60
    while result.state != PipelineState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert result.cancel() == PipelineState.CANCELLED


def test_wait_until_finish_with_a_duration_returns_the_running_state():
    from apache_beam.transforms.periodicsequence import PeriodicImpulse

    p = pipeline("--streaming")
    _ = p | PeriodicImpulse(fire_interval=0.5) | beam.Map(lambda x: x)
    result = p.run()
    try:
        state = result.wait_until_finish(duration=1500)   # milliseconds, as in Beam
        assert state in (PipelineState.STARTING, PipelineState.RUNNING)
    finally:
        assert result.cancel() == PipelineState.CANCELLED


def test_match_continuously_picks_up_files_while_running(tmp_path):
    import threading

    from apache_beam.io import fileio
    from apache_beam.utils.timestamp import Timestamp

    watched = tmp_path / "in"
    watched.mkdir()
    (watched / "a.txt").write_text("a")
    out = tmp_path / "seen"
    out.mkdir()

    def late_file():
        time.sleep(1.5)
        (watched / "b.txt").write_text("b")

    class Record(beam.DoFn):
        def process(self, metadata, out_dir=str(out)):
            name = os.path.basename(metadata.path)
            with open(os.path.join(out_dir, name), "w") as f:
                f.write("seen")
            yield name

    writer = threading.Thread(target=late_file)
    writer.start()
    with pipeline("--streaming") as p:
        _ = (p | fileio.MatchContinuously(str(watched / "*.txt"), interval=0.25,
                                          stop_timestamp=Timestamp.now() + 4)
             | beam.ParDo(Record()))
    writer.join()
    assert sorted(os.listdir(out)) == ["a.txt", "b.txt"]


def test_cancel_while_workers_are_still_starting_does_not_wait_for_them():
    p = pipeline("--streaming", "--worker_start_timeout=120",
                 runner=GpuRunner(placement=NeverConnects()))
    _ = p | beam.Create([1, 2]) | beam.Map(lambda x: x)
    result = p.run()
    time.sleep(1.0)
    started = time.monotonic()
    assert result.cancel() == PipelineState.CANCELLED
    assert time.monotonic() - started < 30    # not the 120 s start timeout
