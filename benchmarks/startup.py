"""Start-up: wall time of a 1-element job: the first of a process (cold), one
after the first in the same process (idle workers reused), and through a warm
job server."""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from benchmarks.common import cold_start, options

_LOG = logging.getLogger(__name__)


def _plus_one(x: int) -> int:
    return x + 1


def _one_element(pipeline: beam.Pipeline) -> None:
    _ = pipeline | beam.Create([1]) | beam.Map(_plus_one)


@dataclass(frozen=True)
class StartupRun:
    mode: str           # cold-gpu, cold-direct, next-gpu, next-direct, warm-jobserver
    median_s: float
    samples_s: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _time_job(opts: PipelineOptions) -> float:
    pipeline = beam.Pipeline(options=opts)
    _one_element(pipeline)
    started = time.perf_counter()
    state = pipeline.run().wait_until_finish()
    elapsed = time.perf_counter() - started
    if state not in (None, "DONE"):
        raise RuntimeError("1-element job ended %s" % state)
    return elapsed


def cold(runner: str, repeats: int) -> StartupRun:
    """``Pipeline.run()`` to done as the first job of a process: no idle
    worker of an earlier job is left to reuse."""
    samples = []
    for _ in range(repeats):
        cold_start()
        samples.append(_time_job(options(runner, 1)))
    return StartupRun("cold-%s" % runner, statistics.median(samples), samples)


def next_job(runner: str, repeats: int, warmup: int = 1) -> StartupRun:
    """``Pipeline.run()`` to done for jobs after the first in this process, as
    a suite of small tests runs them (GpuRunner reuses the idle workers)."""
    for _ in range(warmup):
        _time_job(options(runner, 1))
    samples = [_time_job(options(runner, 1)) for _ in range(repeats)]
    return StartupRun("next-%s" % runner, statistics.median(samples), samples)


#: Beam's PortableRunner client runs ``pip freeze`` on every submission to
#: stage the submission environment's package list (~0.23 s here, profiled);
#: this Beam experiment turns that off. The server's side is the same.
LEAN_CLIENT = "--experiments=disable_logging_submission_environment"


def warm_job_server(repeats: int, warmup: int = 1, lean_client: bool = False) -> StartupRun:
    """A JobServer kept running; submit-to-DONE of a 1-element PortableRunner job.

    The client uses ``--environment_type=LOOPBACK`` (user code in the client's
    worker pool, as submit_mnist does); the server runs GpuRunner. With
    ``lean_client`` the client skips Beam's per-submission ``pip freeze``.
    """
    from beam_gpu_runner.jobservice.executor import GpuRunnerExecutor
    from beam_gpu_runner.jobservice.server import JobServer
    server = JobServer(GpuRunnerExecutor(), port=0)
    server.start()
    try:
        def opts() -> PipelineOptions:
            return PipelineOptions(["--runner=PortableRunner",
                                    "--job_endpoint=%s" % server.endpoint,
                                    "--environment_type=LOOPBACK"]
                                   + ([LEAN_CLIENT] if lean_client else []))
        for _ in range(warmup):
            _time_job(opts())
        samples = [_time_job(opts()) for _ in range(repeats)]
    finally:
        server.stop()
    mode = "warm-jobserver-lean-client" if lean_client else "warm-jobserver"
    return StartupRun(mode, statistics.median(samples), samples)
