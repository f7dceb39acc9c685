"""``beam-gpu-runner resources`` and ``beam-gpu-runner plan``.

``plan MODULE_OR_SCRIPT [pipeline args]`` runs the user's module or script as
``__main__`` with ``Pipeline.run`` replaced by a capture (and ``--runner``
replaced by a runner that only captures), so the pipeline is built but never
executed; then prints the per-stage resource report and the Flink, Kubernetes
and YARN equivalents. Exit status 1 when a hint is invalid or cannot be met on
this host (the run would fail), 2 for usage or configuration errors.
"""
from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence
from unittest import mock

from apache_beam.metrics.metric import MetricResults
from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions
from apache_beam.pipeline import Pipeline
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.runner import PipelineResult, PipelineRunner, PipelineState

from beam_gpu_runner.resources.api import DiscoveryError, ResourceInfo
from beam_gpu_runner.resources.assignment import DeviceAllocator
from beam_gpu_runner.resources.config import ConfigError, ExternalResourceConfig
from beam_gpu_runner.resources.emitters import emit_all, format_emitted
from beam_gpu_runner.resources.leases import LeaseTable
from beam_gpu_runner.resources.loader import DriverLoadError
from beam_gpu_runner.resources.report import (
    INVALID,
    UNSATISFIABLE,
    build_plan,
    format_plan,
)

_LOG = logging.getLogger(__name__)
PLAN_RUNNER = "beam_gpu_runner.resources.commands.PlanRunner"
_SETUP_ERRORS = (ConfigError, DriverLoadError, DiscoveryError)

_CAPTURED: list[beam_runner_api_pb2.Pipeline] = []


class _EmptyMetrics(MetricResults):
    def query(self, filter: Any = None) -> dict[str, list[Any]]:
        return {self.COUNTERS: [], self.DISTRIBUTIONS: [], self.GAUGES: [],
                self.STRINGSETS: [], self.BOUNDED_TRIES: [], self.HISTOGRAMS: []}


class PlannedResult(PipelineResult):
    """What a captured ``run()`` returns: finished at once, no metrics."""

    def __init__(self) -> None:
        super().__init__(PipelineState.DONE)

    def wait_until_finish(self, duration: Optional[int] = None) -> str:
        return str(PipelineState.DONE)

    def cancel(self) -> str:
        return str(PipelineState.DONE)

    def metrics(self) -> MetricResults:
        return _EmptyMetrics()


class PlanRunner(PipelineRunner):
    """A runner that records the pipeline proto instead of running it."""

    def run_pipeline(self, pipeline: Pipeline, options: PipelineOptions) -> PipelineResult:
        _CAPTURED.append(pipeline.to_runner_api())
        return PlannedResult()


def _capturing_run(self: Pipeline, test_runner_api: Any = "AUTO") -> PipelineResult:
    _CAPTURED.append(self.to_runner_api())
    return PlannedResult()


def _replace_runner(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--runner":
            skip = True
        elif not arg.startswith("--runner="):
            out.append(arg)
    return out + ["--runner=%s" % PLAN_RUNNER]


def capture_pipelines(target: str, args: Sequence[str]) -> list[beam_runner_api_pb2.Pipeline]:
    """Run ``target`` (a .py path or a module name) as __main__, capturing pipelines.

    Failures after at least one pipeline was captured are logged, not raised.
    """
    del _CAPTURED[:]
    is_path = target.endswith(".py") or os.path.isfile(target)
    old_argv, old_path = sys.argv[:], sys.path[:]
    sys.argv = [target] + _replace_runner(args)
    if is_path:
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    try:
        with mock.patch.object(Pipeline, "run", _capturing_run):
            if is_path:
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code not in (None, 0) and not _CAPTURED:
            raise
    except Exception as exc:
        if not _CAPTURED:
            raise
        _LOG.warning("plan: %s failed after building its pipeline (ignored; nothing ran):"
                     " %s: %s", target, type(exc).__name__, exc)
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return list(_CAPTURED)


def _discover(config: ExternalResourceConfig
              ) -> tuple[Mapping[str, tuple[ResourceInfo, ...]], Optional[str]]:
    try:
        return DeviceAllocator(config).devices(), None
    except _SETUP_ERRORS as exc:
        return {}, str(exc)


#: (pipeline, its args) -> lines saying which transforms run on accelerator
#: workers and why (the runner's fusion: ``runner.placement_lines``).
PlacementLines = Callable[[beam_runner_api_pb2.Pipeline, Sequence[str]], list[str]]


def plan_main(argv: Sequence[str], placement: Optional[PlacementLines] = None) -> int:
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: beam-gpu-runner plan MODULE_OR_SCRIPT [pipeline args]\n\n"
              "Builds the pipeline without running it and prints, per stage and hint,\n"
              "whether it is honoured, degraded or ignored here, and the equivalent\n"
              "Flink, Kubernetes and YARN resource requests.")
        return 0 if args else 2
    target, pipeline_args = args[0], args[1:]
    from beam_gpu_runner.options import GpuRunnerOptions  # registers our flags
    try:
        config = ExternalResourceConfig.from_options(
            PipelineOptions(list(pipeline_args)).view_as(GpuRunnerOptions))
    except ConfigError as exc:
        print("beam-gpu-runner plan: %s" % exc, file=sys.stderr)
        return 2
    try:
        pipelines = capture_pipelines(target, pipeline_args)
    except SystemExit as exc:
        print("beam-gpu-runner plan: %s exited with %s before building a pipeline"
              % (target, exc.code), file=sys.stderr)
        return 2
    except Exception as exc:
        print("beam-gpu-runner plan: running %s to build its pipeline failed: %s: %s"
              % (target, type(exc).__name__, exc), file=sys.stderr)
        return 2
    if not pipelines:
        print("beam-gpu-runner plan: %s built no pipeline; it must call run() (or use "
              "'with beam.Pipeline(...)') when run as __main__" % target, file=sys.stderr)
        return 2
    devices, error = _discover(config)
    # Pools are sized from --num_workers, as GpuRunner sizes them.
    num_workers = PipelineOptions(list(pipeline_args)).view_as(WorkerOptions).num_workers
    failing = 0
    for number, proto in enumerate(pipelines, 1):
        if len(pipelines) > 1:
            print("=== pipeline %d of %d ===" % (number, len(pipelines)))
        plan = build_plan(proto, config, devices, discovery_error=error,
                          num_workers=num_workers)
        print(format_plan(plan))
        if placement is not None:
            print()
            print("\n".join(placement(proto, pipeline_args)))
        for emitted in emit_all(plan):
            print()
            print(format_emitted(emitted))
        failing += sum(1 for stage in plan.stages for s in stage.statuses
                       if s.status in (INVALID, UNSATISFIABLE))
    if failing:
        print("\n%d hint(s) are invalid or cannot be met here: the run would fail"
              % failing, file=sys.stderr)
        return 1
    return 0


def _devices_lines(devices: Mapping[str, tuple[ResourceInfo, ...]]) -> Iterator[str]:
    for name, infos in devices.items():
        yield "%s: %d" % (name, len(infos))
        for info in infos:
            yield "  " + "  ".join("%s=%s" % kv for kv in info.properties)


def resources_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="beam-gpu-runner resources",
        description="List discovered external resources and current leases.")
    parser.add_argument("--external_resources_config", default=None,
                        help="YAML file with Flink-style external-resource keys.")
    parser.add_argument("--external_resource", action="append", default=None,
                        help="One key=value (repeatable).")
    parser.add_argument("--lease_dir", default=None,
                        help="Lease folder (default: $BEAM_GPU_RUNNER_LEASE_DIR or temp).")
    ns = parser.parse_args(list(argv))
    try:
        config = ExternalResourceConfig.load(ns.external_resources_config,
                                             ns.external_resource or ())
        devices = DeviceAllocator(config).devices()
    except _SETUP_ERRORS as exc:
        print("beam-gpu-runner resources: %s" % exc, file=sys.stderr)
        return 2
    print("Discovered resources")
    for line in _devices_lines(devices):
        print("  " + line)
    table = LeaseTable(ns.lease_dir)
    leases = table.snapshot()
    print("Leases in %s: %d" % (table.path, len(leases)))
    for lease in leases:
        print("  %s %s index %s (%s) share %g held by pid %d for %s" % (
            lease.resource, lease.device_key, lease.index, lease.name, lease.share,
            lease.pid, lease.holder or "?"))
    table.close()
    return 0
