"""GpuRunner: pipeline -> proto -> fused stages -> engine on worker pools."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Optional, Sequence

from apache_beam.options import pipeline_options
from apache_beam.options.value_provider import RuntimeValueProvider
from apache_beam.pipeline import Pipeline
from apache_beam.portability.api import beam_provision_api_pb2, beam_runner_api_pb2
from apache_beam.runners.job import utils as job_utils
from apache_beam.runners.pipeline_utils import (
    group_by_key_input_visitor, merge_common_environments, validate_pipeline_graph)
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.runner import PipelineRunner
from apache_beam.transforms import environments

from beam_gpu_runner.execution.job import Job, JobPlan
from beam_gpu_runner.execution.result import GpuPipelineResult
from beam_gpu_runner.options import GpuRunnerOptions, num_workers
from beam_gpu_runner.placement import harness
from beam_gpu_runner.placement.api import Placement
from beam_gpu_runner.preprocess.fusion import fuse
from beam_gpu_runner.preprocess.requirements import check_requirements
from beam_gpu_runner.workers.plan import plan_pools
from beam_gpu_runner.workers.factory import ProcessWorkerFactory
from beam_gpu_runner.workers.registry import WorkerRegistry

_LOG = logging.getLogger(__name__)


def worker_environment() -> environments.Environment:
    """Our workers: Beam's SDK harness under this very interpreter."""
    return environments.SubprocessSDKEnvironment.from_command_string(
        "%s -m %s" % (sys.executable, harness.MODULE))


def portable_options(options: pipeline_options.PipelineOptions) -> dict[str, Any]:
    """The options workers get: set ones only, JSON-serialisable ones only."""
    all_options = options.get_all_options(drop_default=True, retain_unknown_options=True)
    runner_only = _runner_only_options()
    portable: dict[str, Any] = {}
    for key, value in all_options.items():
        if value is None or key in runner_only:
            continue
        try:
            json.dumps(value)
        except TypeError:
            _LOG.debug("Not passing option %s=%r to workers (not JSON)", key, value)
            continue
        portable[key] = value
    return portable


def _runner_only_options() -> set[str]:
    """GpuRunnerOptions' destinations: the driver's business, not the workers'."""
    import argparse
    parser = argparse.ArgumentParser()
    GpuRunnerOptions._add_argparse_args(parser)
    return {action.dest for action in parser._actions}


def options_json(portable: dict[str, Any]) -> str:
    """PIPELINE_OPTIONS for sdk_worker_main (a Struct would turn ints to floats)."""
    return json.dumps({"options": portable}, sort_keys=True)


class GpuRunner(PipelineRunner):
    """Runs Beam pipelines with bundles in worker processes that own GPUs.

    ``placement`` (tests, Ray) and ``provision_info`` (the job server's
    artifacts) may be injected; by default workers are local subprocesses.
    """

    def __init__(self, placement: Optional[Placement] = None,
                 provision_info: Optional[fn_runner.ExtendedProvisionInfo] = None,
                 is_drain: bool = False) -> None:
        super().__init__()
        self._placement = placement
        self._provision_info = provision_info
        #: Expand splittable DoFns for draining (truncate restrictions).
        self._is_drain = is_drain

    # ---- Beam entry points --------------------------------------------------

    def run_pipeline(self, pipeline: Pipeline,
                     options: pipeline_options.PipelineOptions) -> GpuPipelineResult:
        RuntimeValueProvider.set_runtime_options({})
        debug = options.view_as(pipeline_options.DebugOptions)
        experiments = debug.experiments or []
        if "beam_fn_api" not in experiments:
            experiments.append("beam_fn_api")
        debug.experiments = experiments
        pipeline.visit(group_by_key_input_visitor(
            not options.view_as(pipeline_options.TypeOptions)
            .allow_non_deterministic_key_coders))
        proto = pipeline.to_runner_api(default_environment=worker_environment())
        result = self.run_via_runner_api(proto, options)
        if not options.view_as(pipeline_options.StandardOptions).streaming:
            # Like Beam's DirectRunner, a batch run() returns when it is done.
            try:
                result.wait_until_finish()
            except KeyboardInterrupt as interrupt:
                # Ctrl-C: stop the job (its workers, its leases) before the
                # interrupt goes on; the caller finds it on the interrupt.
                result.cancel()
                setattr(interrupt, "pipeline_result", result)
                raise
        return result

    def run_via_runner_api(self, pipeline_proto: beam_runner_api_pb2.Pipeline,
                           options: pipeline_options.PipelineOptions
                           ) -> GpuPipelineResult:
        """Start the job and return at once (the job server uses this)."""
        gpu_options = options.view_as(GpuRunnerOptions)
        validate_pipeline_graph(pipeline_proto)
        checker = fn_runner.FnApiRunner()
        check_requirements(pipeline_proto)   # FnApiRunner's, plus TestStream
        pipeline_proto = merge_common_environments(
            checker.resolve_any_environments(pipeline_proto))
        stage_context, stages = fuse(pipeline_proto, is_drain=self._is_drain)
        workers = num_workers(options)
        placement = self._placement or _default_placement(gpu_options)
        devices: Any = None

        def release() -> None:
            if self._placement is None:
                placement.close()
            if devices is not None:
                devices.close()

        try:
            # A placement that assigns devices itself (Ray) needs no local leases.
            devices = None if placement.assigns_devices else _device_allocator(gpu_options)
            pools = plan_pools(
                stages, stage_context.components, workers,
                placement if placement.assigns_devices else devices,
                options.view_as(pipeline_options.DebugOptions).number_of_worker_harness_threads)
        except BaseException:
            release()
            raise

        portable = portable_options(options)
        struct = job_utils.dict_to_struct(
            {"beam:option:%s:v1" % k: v for k, v in portable.items()})
        provision = self._provision_info or fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(
                retrieval_token="unused-retrieval-token", pipeline_options=struct))
        registry = WorkerRegistry(provision, host=placement.advertise_host())
        factory = ProcessWorkerFactory(
            registry, placement, dict(stage_context.components.environments),
            options_json(portable), gpu_options.worker_start_timeout,
            devices, pools.stage_names, pools.hint_texts)
        plan = JobPlan(stage_context, stages, pools.pool_of_stage, pools.sizes,
                       streaming=options.view_as(pipeline_options.StandardOptions).streaming,
                       bundles_per_worker=pools.bundles_per_worker)
        registry.on_close(release)   # the job closes the registry when it ends
        job = Job(plan, registry, factory, gpu_options.max_bundle_attempts, workers)
        job.start()
        return GpuPipelineResult(job)


def _default_placement(options: GpuRunnerOptions) -> Placement:
    if options.placement == "ray":
        from beam_gpu_runner.placement.ray import RayPlacement
        return RayPlacement(address=options.ray_address,
                            start_timeout=options.worker_start_timeout,
                            runtime_env=options.ray_runtime_env)
    from beam_gpu_runner.placement.local import LocalPlacement
    return LocalPlacement()


def _device_allocator(options: GpuRunnerOptions) -> Any:
    from beam_gpu_runner.resources.assignment import DeviceAllocator
    from beam_gpu_runner.resources.config import ExternalResourceConfig
    config = ExternalResourceConfig.from_options(options)   # --fake_gpus too
    return DeviceAllocator(config, lease_dir=options.lease_dir)


RUN_USAGE = """\
usage: beam-gpu-runner run MODULE_OR_SCRIPT [pipeline args...]

Runs a pipeline program on GpuRunner: a module (run as with python -m) or a
.py file, with --runner=beam_gpu_runner.GpuRunner added to its arguments
unless they name a runner. Its arguments go to it unchanged, so
`beam-gpu-runner run MODULE --help` shows the program's own help.

  beam-gpu-runner run beam_gpu_runner.pipelines.mnist_streaming --num_images=2000
  beam-gpu-runner run my_pipeline.py --fake_gpus=2 --num_workers=2

GpuRunner's options: --fake_gpus, --external_resource, --external_resources_config,
--num_workers, --placement, ... (README.md lists them). SIGTERM stops the
program as Ctrl-C does: a running job is cancelled and its workers stopped."""


def run_main(argv: Sequence[str]) -> int:
    """``beam-gpu-runner run MODULE [args]``: run a pipeline module on GpuRunner."""
    import importlib.util
    import runpy

    import beam_gpu_runner.interrupts as interrupts
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(RUN_USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    target, rest = argv[0], list(argv[1:])
    is_path = target.endswith(".py") or os.path.sep in target
    if target.startswith("-"):
        print("beam-gpu-runner run: %r is an option, but the first argument must be the "
              "pipeline module or script to run\n\n%s" % (target, RUN_USAGE), file=sys.stderr)
        return 2
    if is_path and not os.path.isfile(target):
        print("beam-gpu-runner run: no such pipeline script %r (from %s); give an "
              "existing .py file or a module name" % (target, os.getcwd()), file=sys.stderr)
        return 2
    if not is_path:
        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError) as exc:   # a parent package is missing
            found, reason = None, "%s: %s" % (type(exc).__name__, exc)
        else:
            reason = "not found on the module path"
        if found is None:
            print("beam-gpu-runner run: cannot run module %r (%s); give an importable "
                  "module (as for python -m) or a .py file" % (target, reason),
                  file=sys.stderr)
            return 2
    if not any(a.startswith("--runner") for a in rest):
        rest.append("--runner=beam_gpu_runner.GpuRunner")
    sys.argv = [target] + rest
    try:
        with interrupts.sigterm_interrupts():
            if is_path:
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    except KeyboardInterrupt as interrupt:
        print("beam-gpu-runner run: %s: stopped" % target, file=sys.stderr)
        return interrupts.exit_code(interrupt)
    return 0


__all__ = ["GpuRunner", "worker_environment"]
