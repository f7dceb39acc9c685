"""Which worker pool runs each stage, and how big each pool is.

A pool is keyed by (environment, requirements): the requirements come from the
environment's Beam resource hints, so the pool is where devices attach. GPU
pools of one job are sized together, so that all of their workers can hold
their devices at once: a job never waits on itself for a GPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from apache_beam.portability.api import beam_runner_api_pb2
from beam_gpu_runner.bridge.beam import Stage

from beam_gpu_runner.resources.assignment import ResourceShortageError
from beam_gpu_runner.resources.hints import (
    accelerator_matches, accelerator_text, requirements_from_hints)
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


def matching_devices(devices: Any, req: StageRequirements) -> int:
    """How many GPUs are of the type ``req`` asks for: the local allocator's,
    or those of a placement that assigns devices itself (Ray)."""
    if devices is not None and hasattr(devices, "matching_devices"):
        return int(devices.matching_devices(req))
    gpus = devices.devices().get("gpu", ()) if devices is not None else ()
    return sum(1 for g in gpus if accelerator_matches(
        req.accelerator_type, g.get_property("name"),
        int(g.get_property("memory-total") or 0) or None))


def _units(req: StageRequirements) -> float:
    """Devices one worker of ``req`` takes (a fraction for shared devices)."""
    return req.gpu_count if req.gpu_count < 1 else float(req.whole_devices)


def gpu_pool_sizes(keys: Sequence[PoolKey], devices: Any, num_workers: int
                   ) -> dict[PoolKey, int]:
    """One worker per GPU pool first, then more while devices last.

    Pools whose first worker does not fit get size 0: the caller reports them.
    Each pool is bounded by its own matching devices and the job's total by
    the largest matching set: exact when all pools ask for the same type,
    conservative on hosts with mixed GPU models.
    """
    sizes = {k: 0 for k in keys}
    used: dict[PoolKey, float] = {k: 0.0 for k in keys}
    total = max((matching_devices(devices, k.requirements) for k in keys), default=0)
    spent = 0.0
    grew = True
    while grew:
        grew = False
        for key in keys:
            units = _units(key.requirements)
            if sizes[key] >= num_workers:
                continue
            own = matching_devices(devices, key.requirements)
            if used[key] + units <= own + 1e-9 and spent + units <= total + 1e-9:
                sizes[key] += 1
                used[key] += units
                spent += units
                grew = True
    return sizes


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
               num_workers: int, devices: Optional[Any],
               harness_threads: Optional[int] = None) -> PoolPlan:
    """Raises InvalidHintError for malformed hints (naming the transforms) and
    the allocator's ResourceShortageError when a GPU stage cannot get even one
    worker's devices (naming the stage, the hint and the config key).

    ``devices`` is the local DeviceAllocator, or a placement that assigns
    devices itself (Ray, with ``matching_devices``): pools are sized from what
    its cluster has, and the placement refuses, with its own clear error, what
    the cluster can never hold. None: GPU pools get ``num_workers`` workers.
    """
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
        stage_names.setdefault(key, []).append(stage.name)
        hint_texts[key] = accelerator_text(hints) or ""
    gpu_keys = [k for k in stage_names if k.requirements.needs_gpu]
    sizes: dict[PoolKey, int] = {k: num_workers for k in stage_names
                                 if not k.requirements.needs_gpu}
    if devices is None:
        sizes.update({k: num_workers for k in gpu_keys})
    else:
        sizes.update(gpu_pool_sizes(gpu_keys, devices, num_workers))
    for key in gpu_keys:
        if sizes[key] == 0:
            if not hasattr(devices, "acquire"):
                sizes[key] = 1   # the placement explains when its worker cannot start
                continue
            _fail_fast(key, stage_names[key], hint_texts[key], devices)
    per_worker = {k: bundles_per_worker(k.requirements, harness_threads) for k in sizes}
    for key, size in sizes.items():
        _LOG.info("Pool %s: %d worker(s), %d bundle(s) each, for %d stage(s)",
                  key.describe(), size, per_worker[key], len(stage_names[key]))
    return PoolPlan(pool_of_stage, sizes, stage_names, hint_texts, per_worker)


def _fail_fast(key: PoolKey, stages: list[str], hint: str, devices: Any) -> None:
    """Let the allocator explain why (type mismatch, too few devices)."""
    assignment = devices.acquire(", ".join(stages), key.requirements, hint, "plan-check")
    # The devices were there for one worker alone: another GPU stage of this
    # job took them. Say so rather than hand out an empty set later.
    devices.release(assignment)
    raise ResourceShortageError(
        "plan_pools: stages %s (accelerator hint %r) cannot get a worker: this job's "
        "other GPU stages need all %d matching device(s); configure more devices "
        "(external-resource.gpu.amount / a bigger host) or lower the hints' counts"
        % (stages, hint, matching_devices(devices, key.requirements)))
