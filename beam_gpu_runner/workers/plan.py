"""Which worker pool runs each stage, and how big each pool is.

A pool is keyed by (environment, requirements): the requirements come from the
environment's Beam resource hints, so the pool is where devices attach. GPU
pools of one job are sized together, so that all of their workers can hold
their devices at once: a job never waits on itself for a GPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from apache_beam.portability.api import beam_runner_api_pb2

from beam_gpu_runner.bridge.beam import Stage
from beam_gpu_runner.resources.assignment import ResourceShortageError
from beam_gpu_runner.resources.hints import accelerator_text, requirements_from_hints
from beam_gpu_runner.resources.planner import (
    DeviceInventory, GpuRequest, GpuVerdict, plan_gpus)
from beam_gpu_runner.resources.requirements import StageRequirements
from beam_gpu_runner.workers.pool import PoolKey

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolPlan:
    pool_of_stage: Mapping[str, PoolKey]
    sizes: Mapping[PoolKey, int]
    stage_names: Mapping[PoolKey, list[str]]
    hint_texts: Mapping[PoolKey, str]
    #: bundles one worker of the pool runs at once
    bundles_per_worker: Mapping[PoolKey, int] = field(default_factory=dict)
    #: the planner's verdict on each GPU pool (what `plan` prints)
    verdicts: Mapping[PoolKey, GpuVerdict] = field(default_factory=dict)


def _default_environment(stages: Sequence[Stage],
                         components: beam_runner_api_pb2.Components) -> str:
    for stage in stages:
        env = stage.environment
        if env and not components.environments[env].resource_hints:
            return env
    for stage in stages:
        if stage.environment:
            return stage.environment
    return next(iter(components.environments), "")


#: Bundles per worker when neither the stage's max_active_bundles_per_worker
#: hint nor --number_of_worker_harness_threads says: two for CPU workers, so a
#: worker receives the next bundle's input while it computes the current one
#: (measured on MNIST, BUILD_NOTES.md); one for GPU workers, because Beam
#: builds a DoFn instance per concurrent bundle and a DoFn that loads its
#: model in setup() would hold it on the device twice. A GPU DoFn that shares
#: its model (apache_beam.utils.shared, as ClassifyMnist does) opts in with
#: the hint.
DEFAULT_BUNDLES_PER_WORKER = 2
DEFAULT_BUNDLES_PER_GPU_WORKER = 1


def bundles_per_worker(req: StageRequirements, harness_threads: Optional[int]) -> int:
    """The stage's hint first, then Beam's --number_of_worker_harness_threads."""
    default = DEFAULT_BUNDLES_PER_GPU_WORKER if req.needs_gpu else DEFAULT_BUNDLES_PER_WORKER
    return req.max_active_bundles_per_worker or harness_threads or default


def plan_pools(stages: Sequence[Stage],
               components: beam_runner_api_pb2.Components,
               num_workers: int, inventory: Optional[DeviceInventory],
               harness_threads: Optional[int] = None,
               labels: Optional[Mapping[str, str]] = None,
               fail_fast: bool = True) -> PoolPlan:
    """Raises InvalidHintError for malformed hints (naming the transforms) and
    ResourceShortageError when a GPU stage cannot get even one worker's devices
    (naming the stage, the hint, what there is and how to get more).

    ``inventory`` is the local allocator, or a placement that assigns devices
    itself (Ray): GPU pools are sized from it by the same planner that
    ``beam-gpu-runner plan`` uses (``resources.planner``). None: GPU pools
    get ``num_workers`` workers (tests without devices). ``fail_fast=False``
    (Ray, which reports infeasible requests itself, and may autoscale): a
    pool that cannot be planned gets one worker and the placement explains.
    """
    labels = labels or {}
    default_env = _default_environment(stages, components)
    pool_of_stage: dict[str, PoolKey] = {}
    stage_names: dict[PoolKey, list[str]] = {}
    hint_texts: dict[PoolKey, str] = {}
    for stage in stages:
        env_id = stage.environment or default_env
        hints = dict(components.environments[env_id].resource_hints) if env_id else {}
        req = requirements_from_hints(hints, [t.unique_name for t in stage.transforms])
        key = PoolKey(env_id, req)
        pool_of_stage[stage.name] = key
        stage_names.setdefault(key, []).append(labels.get(stage.name, stage.name))
        hint_texts[key] = accelerator_text(hints) or ""
    gpu_keys = [k for k in stage_names if k.requirements.needs_gpu]
    sizes: dict[PoolKey, int] = {k: num_workers for k in stage_names}
    verdicts: dict[PoolKey, GpuVerdict] = {}
    if inventory is not None:
        verdicts = {k: v for k, v in plan_gpus(
            [GpuRequest(k, tuple(stage_names[k]), k.requirements, hint_texts[k])
             for k in gpu_keys], inventory, num_workers).items()
            if isinstance(k, PoolKey)}
        for key in gpu_keys:
            verdict = verdicts[key]
            if not verdict.ok and not fail_fast:
                sizes[key] = 1
                continue
            if not verdict.ok:
                raise ResourceShortageError(
                    "stages %s (accelerator hint %r) cannot get a worker: %s"
                    % (stage_names[key], hint_texts[key], verdict.detail))
            sizes[key] = verdict.workers
    per_worker = {k: bundles_per_worker(k.requirements, harness_threads) for k in sizes}
    for key, size in sizes.items():
        _LOG.info("Pool %s: %d worker(s), %d bundle(s) each, for stage(s) %s",
                  key.describe(), size, per_worker[key], stage_names[key])
    return PoolPlan(pool_of_stage, sizes, stage_names, hint_texts, per_worker, verdicts)
