"""GpuRunner: pipeline -> proto -> fused stages -> engine on worker pools."""
from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from typing import Any, Optional, Sequence

from apache_beam.options import pipeline_options
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.value_provider import RuntimeValueProvider
from apache_beam.pipeline import Pipeline
from apache_beam.portability.api import beam_provision_api_pb2, beam_runner_api_pb2
from apache_beam.runners.job import utils as job_utils
from apache_beam.runners.pipeline_utils import (
    group_by_key_input_visitor, merge_common_environments, validate_pipeline_graph)
from apache_beam.runners.runner import PipelineRunner
from apache_beam.transforms import environments

from beam_gpu_runner.bridge.beam import ExtendedProvisionInfo, resolve_any_environments
from beam_gpu_runner.execution.job import GpuJob, JobPlan, PoolSpec
from beam_gpu_runner.execution.pipeline_result import GpuPipelineResult
from beam_gpu_runner.options import GpuRunnerOptions, num_workers
from beam_gpu_runner.placement import harness
from beam_gpu_runner.placement.api import Placement
from beam_gpu_runner.preprocess.fusion import fuse
from beam_gpu_runner.preprocess.requirements import check_requirements
from beam_gpu_runner.preprocess.stage_graph import build_job_graph, is_streaming
from beam_gpu_runner.resources.planner import DeviceInventory
from beam_gpu_runner.ui.progress import show_progress
from beam_gpu_runner.ui.sources import serve_run
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
                 provision_info: Optional[ExtendedProvisionInfo] = None,
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
        ui = serve_run(result.status, options)   # None unless --ui_port
        if options.view_as(pipeline_options.StandardOptions).streaming:
            if ui is not None:
                result.when_done(ui.stop)
            return result
        # Like Beam's DirectRunner, a batch run() returns when it is done;
        # in a terminal it shows its progress meanwhile.
        progress = show_progress(result.status)
        try:
            result.wait_until_finish()
        except KeyboardInterrupt as interrupt:
            # Ctrl-C: stop the job (its workers, its leases) before the
            # interrupt goes on; the caller finds it on the interrupt.
            progress.stop()
            result.cancel()
            setattr(interrupt, "pipeline_result", result)
            raise
        finally:
            progress.stop()
            if ui is not None:
                ui.stop()
        return result

    def run_via_runner_api(self, pipeline_proto: beam_runner_api_pb2.Pipeline,
                           options: pipeline_options.PipelineOptions
                           ) -> GpuPipelineResult:
        """Start the job and return at once (the job server uses this)."""
        gpu_options = options.view_as(GpuRunnerOptions)
        validate_pipeline_graph(pipeline_proto)
        check_requirements(pipeline_proto)   # FnApiRunner's, plus TestStream
        pipeline_proto = merge_common_environments(resolve_any_environments(pipeline_proto))
        stage_context, stages = fuse(pipeline_proto, is_drain=self._is_drain,
                                     chaining=gpu_options.accelerator_chaining == "on")
        workers = num_workers(options)
        placement = self._placement or _default_placement(gpu_options)
        devices: Any = None

        def release() -> None:
            if self._placement is None:
                placement.close()
            if devices is not None:
                devices.close()

        streaming = (options.view_as(pipeline_options.StandardOptions).streaming
                     or is_streaming(stage_context.components))
        graph = build_job_graph(stages, stage_context.components, streaming,
                                original=pipeline_proto.components)
        try:
            # A placement that assigns devices itself (Ray) needs no local leases.
            devices = None if placement.assigns_devices else _device_allocator(gpu_options)
            inventory: Optional[DeviceInventory] = (
                placement if isinstance(placement, DeviceInventory) else None
            ) if placement.assigns_devices else devices
            pools = plan_pools(
                stages, stage_context.components, workers, inventory,
                options.view_as(pipeline_options.DebugOptions).number_of_worker_harness_threads,
                labels=graph.labels, fail_fast=not placement.assigns_devices)
        except BaseException:
            release()
            raise

        portable = portable_options(options)
        struct = job_utils.dict_to_struct(
            {"beam:option:%s:v1" % k: v for k, v in portable.items()})
        provision = self._provision_info or ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(
                retrieval_token="unused-retrieval-token", pipeline_options=struct))
        registry = WorkerRegistry(provision, host=placement.advertise_host())
        job_id = _job_id(options)
        factory = ProcessWorkerFactory(
            registry, placement, dict(stage_context.components.environments),
            options_json(portable), gpu_options.worker_start_timeout,
            devices, pools.stage_names, pools.hint_texts, job_id=job_id)
        pool_ids = {key: "pool%d" % i for i, key in enumerate(pools.sizes)}
        plan = JobPlan(
            job_id=job_id, name=_job_name(options), stages=tuple(stages),
            stage_context=stage_context, graph=graph,
            pools={pool_ids[key]: PoolSpec(key, size, pools.bundles_per_worker[key])
                   for key, size in pools.sizes.items()},
            pool_of_stage={s.name: pool_ids[pools.pool_of_stage[s.name]] for s in stages
                           if s.name not in graph.runner_side},
            streaming=streaming,
            hints={s.name: pools.hint_texts.get(pools.pool_of_stage[s.name], "")
                   for s in stages},
            options={k: str(v) for k, v in portable.items()},
            shuffle_memory_budget=gpu_options.shuffle_memory_budget,
            spill_dir=gpu_options.spill_dir)
        registry.on_close(release)   # the job closes the registry when it ends
        job = GpuJob(plan, registry, factory, gpu_options.max_bundle_attempts,
                     keep_logs=getattr(placement, "keep_logs", None))
        job.start()
        return GpuPipelineResult(job)


_job_ids = itertools.count(1)


def _job_name(options: pipeline_options.PipelineOptions) -> str:
    """The pipeline's --job_name, else the main script's name."""
    name = options.view_as(pipeline_options.GoogleCloudOptions).job_name
    if name:
        return str(name)
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return os.path.splitext(script)[0] or "pipeline"


def _job_id(options: pipeline_options.PipelineOptions) -> str:
    return "%s-%d-%d" % (_job_name(options), os.getpid(), next(_job_ids))


def _default_placement(options: GpuRunnerOptions) -> Placement:
    if options.placement == "ray":
        from beam_gpu_runner.placement.ray import RayPlacement
        return RayPlacement(address=options.ray_address,
                            start_timeout=options.worker_start_timeout,
                            runtime_env=options.ray_runtime_env,
                            local_gpus=lambda: _device_allocator(options).devices().get(
                                "gpu", ()))
    from beam_gpu_runner.placement.local import LocalPlacement
    return LocalPlacement(keep_alive_s=options.worker_keep_alive)


def _device_allocator(options: GpuRunnerOptions) -> Any:
    from beam_gpu_runner.resources.assignment import DeviceAllocator
    from beam_gpu_runner.resources.config import ExternalResourceConfig
    config = ExternalResourceConfig.from_options(options)   # --fake_gpus too
    return DeviceAllocator(config, lease_dir=options.lease_dir,
                           wait_timeout=options.device_wait_timeout)


def placement_lines(pipeline_proto: beam_runner_api_pb2.Pipeline,
                    args: Sequence[str]) -> list[str]:
    """Which transforms run on accelerator workers and why, as ``run`` fuses them."""
    from beam_gpu_runner.preprocess.chaining import is_hinted
    options = PipelineOptions(list(args)).view_as(GpuRunnerOptions)
    chaining = options.accelerator_chaining == "on"
    proto = merge_common_environments(resolve_any_environments(pipeline_proto))
    context, stages = fuse(proto, chaining=chaining)
    graph = build_job_graph(stages, context.components, original=proto.components)
    lines = ["Accelerator stages (--accelerator_chaining=%s)" % options.accelerator_chaining]
    for stage in stages:
        if not is_hinted(context.components, stage.environment):
            continue
        lines.append("  stage %s runs on accelerator workers:" % graph.labels[stage.name])
        lines.append("    transforms: %s" % ", ".join(graph.transforms[stage.name]))
        if stage.name in graph.notes:
            lines.append("    %s" % graph.notes[stage.name])
    if len(lines) == 1:
        lines.append("  none: no transform asks for an accelerator")
    return lines


def plan_main(argv: Sequence[str]) -> int:
    """``beam-gpu-runner plan``: the resource report, then what runs where."""
    from beam_gpu_runner.resources.commands import plan_main as report
    return report(argv, placement=placement_lines)


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
