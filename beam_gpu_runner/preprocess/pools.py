"""Which worker pool runs each stage, and how big each pool is.

A pool is keyed by (environment, requirements): the requirements come from the
environment's Beam resource hints, so the pool is where devices attach.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import translations

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


def _default_environment(stages: Sequence[translations.Stage],
                         components: beam_runner_api_pb2.Components) -> str:
    for stage in stages:
        env = stage.environment
        if env and not components.environments[env].resource_hints:
            return env
    for stage in stages:
        if stage.environment:
            return stage.environment
    return next(iter(components.environments), "")


def device_capacity(devices: Any, req: StageRequirements) -> int:
    """How many workers with ``req`` this host's matching GPUs can serve."""
    gpus = devices.devices().get("gpu", ()) if devices is not None else ()
    matching = [g for g in gpus if accelerator_matches(
        req.accelerator_type, g.get_property("name"),
        int(g.get_property("memory-total") or 0) or None)]
    if req.gpu_count < 1:
        return int(len(matching) * int(1 / req.gpu_count + 1e-9))
    return len(matching) // req.whole_devices


def plan_pools(stages: Sequence[translations.Stage],
               components: beam_runner_api_pb2.Components,
               num_workers: int, devices: Optional[Any]) -> PoolPlan:
    """Raises InvalidHintError for malformed hints, naming the transforms."""
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
    sizes: dict[PoolKey, int] = {}
    for key in stage_names:
        size = num_workers
        if key.requirements.needs_gpu:
            # Never more GPU workers than devices; at least one, whose start
            # then fails with the allocator's message naming stage and hint.
            size = max(1, min(num_workers, device_capacity(devices, key.requirements)))
        sizes[key] = size
        _LOG.info("Pool %s: %d worker(s) for stages %s", key.describe(), size,
                  stage_names[key])
    return PoolPlan(pool_of_stage, sizes, stage_names, hint_texts)
