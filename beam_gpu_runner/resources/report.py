"""Per stage and per hint: honoured, degraded (how) or ignored.

A "stage" here is the set of leaf transforms sharing one environment: Beam gives
transforms with different hints different environments and never fuses them,
so each hinted environment is one kind of worker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import psutil
from apache_beam.portability.api import beam_runner_api_pb2

from beam_gpu_runner.resources.api import ResourceInfo
from beam_gpu_runner.resources import planner
from beam_gpu_runner.resources.assignment import DiscoveredInventory
from beam_gpu_runner.resources.config import ExternalResourceConfig
from beam_gpu_runner.resources.hints import (
    ACCELERATOR_URN,
    CPU_COUNT_URN,
    HINT_NAMES,
    MAX_ACTIVE_BUNDLES_URN,
    MIN_RAM_URN,
    InvalidHintError,
    parse_accelerator,
    requirements_from_hints,
)
from beam_gpu_runner.resources.planner import GpuRequest, GpuVerdict
from beam_gpu_runner.resources.requirements import NO_REQUIREMENTS, StageRequirements

HONOURED = "honoured"
DEGRADED = "degraded"
IGNORED = "ignored"
UNSATISFIABLE = "unsatisfiable"   # the job will fail fast (ResourceShortageError)
INVALID = "invalid"               # the hint is malformed (InvalidHintError)


@dataclass(frozen=True)
class HintStatus:
    hint: str          # "accelerator", "min_ram", ..., or the urn when unknown
    text: str          # the hint's value as Beam encoded it
    status: str        # HONOURED / DEGRADED / IGNORED / UNSATISFIABLE / INVALID
    detail: str


@dataclass(frozen=True)
class StagePlan:
    name: str
    environment_id: str
    transforms: tuple[str, ...]
    hints: tuple[tuple[str, bytes], ...]
    requirements: StageRequirements
    statuses: tuple[HintStatus, ...]

    @property
    def accelerator_text(self) -> Optional[str]:
        raw = dict(self.hints).get(ACCELERATOR_URN)
        return None if raw is None else raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class ResourcePlan:
    stages: tuple[StagePlan, ...]
    config: ExternalResourceConfig
    devices: Mapping[str, tuple[ResourceInfo, ...]] = field(default_factory=dict)
    discovery_error: Optional[str] = None
    unhinted_transforms: int = 0


def hinted_environments(pipeline: beam_runner_api_pb2.Pipeline
                        ) -> list[tuple[str, tuple[str, ...], dict[str, bytes]]]:
    """(environment id, leaf transform names, hints) for each hinted environment."""
    groups: dict[str, list[str]] = {}
    for transform in pipeline.components.transforms.values():
        if transform.subtransforms or not transform.environment_id:
            continue
        groups.setdefault(transform.environment_id, []).append(transform.unique_name)
    out = []
    for env_id in sorted(groups):
        env = pipeline.components.environments.get(env_id)
        hints = dict(env.resource_hints) if env is not None else {}
        if hints:
            out.append((env_id, tuple(sorted(groups[env_id])), hints))
    return out


def _count_unhinted(pipeline: beam_runner_api_pb2.Pipeline) -> int:
    envs = pipeline.components.environments
    return sum(1 for t in pipeline.components.transforms.values()
               if not t.subtransforms and t.environment_id
               and not (t.environment_id in envs and envs[t.environment_id].resource_hints))


def _stage_name(transforms: Sequence[str]) -> str:
    return transforms[0] if len(transforms) == 1 else "%s (+%d)" % (
        transforms[0], len(transforms) - 1)


def _accelerator(text: str, transforms: Sequence[str],
                 verdict: Optional[GpuVerdict]) -> list[HintStatus]:
    """The planner's verdict (the one ``run`` acts on), and the flags it ignores."""
    hint = parse_accelerator(text, transforms)
    out: list[HintStatus] = []
    if verdict is not None:
        status = {planner.HONOURED: HONOURED, planner.DEGRADED: DEGRADED,
                  planner.UNSATISFIABLE: UNSATISFIABLE}[verdict.status]
        detail = verdict.detail
        if status == UNSATISFIABLE:
            detail += "; the job will fail with ResourceShortageError"
        out.append(HintStatus("accelerator", text, status, detail))
    if hint.install_driver:
        out.append(HintStatus("accelerator:install-nvidia-driver", text, IGNORED,
                              "the runner does not install drivers; the host's is used"))
    for flag in hint.other_flags:
        out.append(HintStatus("accelerator:%s" % flag, text, IGNORED,
                              "not acted on by this runner"))
    return out


def _host_capacity(name: str, text: str, have: int, unit: str, note: str) -> HintStatus:
    """A min_ram / cpu_count hint against what this host has."""
    if int(text) <= have:
        return HintStatus(name, text, HONOURED, "host has %d %s; %s" % (have, unit, note))
    return HintStatus(name, text, DEGRADED, "host has only %d %s; runs anyway" % (have, unit))

def _stage(env_id: str, transforms: tuple[str, ...], hints: Mapping[str, bytes],
           verdict: Optional[GpuVerdict], host_memory: int, host_cpus: int) -> StagePlan:
    statuses: list[HintStatus] = []
    try:
        req = requirements_from_hints(hints, transforms)
    except InvalidHintError as exc:
        req = NO_REQUIREMENTS
        statuses.append(HintStatus("hints", "", INVALID, str(exc)))
    for urn in sorted(hints):
        text = hints[urn].decode("utf-8", "replace")
        name = HINT_NAMES.get(urn, urn)
        try:
            if urn == ACCELERATOR_URN:
                statuses.extend(_accelerator(text, transforms, verdict))
            elif urn == MIN_RAM_URN:
                statuses.append(_host_capacity(name, text, host_memory, "bytes",
                                               "not reserved per worker"))
            elif urn == CPU_COUNT_URN:
                statuses.append(_host_capacity(name, text, host_cpus, "cores",
                                               "workers are not pinned"))
            elif urn == MAX_ACTIVE_BUNDLES_URN:
                statuses.append(HintStatus(
                    name, text, HONOURED,
                    "the worker pool runs at most %s bundles per worker" % text))
            else:
                statuses.append(HintStatus(name, text, IGNORED, "unknown hint urn"))
        except (InvalidHintError, ValueError) as exc:
            if not any(s.status == INVALID for s in statuses):
                statuses.append(HintStatus(name, text, INVALID, str(exc)))
    return StagePlan(_stage_name(transforms), env_id, transforms,
                     tuple(sorted(hints.items())), req, tuple(statuses))


def build_plan(pipeline: beam_runner_api_pb2.Pipeline, config: ExternalResourceConfig,
               devices: Mapping[str, tuple[ResourceInfo, ...]], *,
               discovery_error: Optional[str] = None, host_memory: Optional[int] = None,
               host_cpus: Optional[int] = None, num_workers: Optional[int] = None
               ) -> ResourcePlan:
    """The plan for ``pipeline`` on a host with ``devices`` (from DeviceAllocator),
    its GPU verdicts from the planner ``run`` uses (``resources.planner``)."""
    memory = host_memory if host_memory is not None else psutil.virtual_memory().total
    cpus = host_cpus if host_cpus is not None else (psutil.cpu_count() or 1)
    environments = hinted_environments(pipeline)
    requests = []
    for env_id, transforms, hints in environments:
        try:
            req = requirements_from_hints(hints, transforms)
        except InvalidHintError:
            continue   # reported as INVALID by _stage
        if req.needs_gpu:
            requests.append(GpuRequest(env_id, transforms, req))
    verdicts = planner.plan_gpus(requests, DiscoveredInventory(config, devices),
                                 num_workers or cpus)
    stages = tuple(_stage(env_id, transforms, hints, verdicts.get(env_id), memory, cpus)
                   for env_id, transforms, hints in environments)
    return ResourcePlan(stages, config, dict(devices), discovery_error,
                        _count_unhinted(pipeline))


def format_plan(plan: ResourcePlan) -> str:
    lines = ["Resource plan"]
    for name, infos in plan.devices.items():
        spec = plan.config.get(name)
        lines.append("  resource %s (driver %s): %d discovered%s" % (
            name, spec.driver_factory if spec else "?", len(infos),
            "".join("\n    index %s: %s %s" % (i.get_property("index"),
                                                i.get_property("name") or "",
                                                i.get_property("uuid") or "")
                    for i in infos)))
    if plan.discovery_error:
        lines.append("  discovery failed: %s" % plan.discovery_error)
    if not plan.stages:
        lines.append("  no transform carries resource hints")
    for stage in plan.stages:
        lines.append("")
        lines.append("stage %s [%s]: %s" % (stage.name, stage.environment_id,
                                           stage.requirements.describe()))
        lines.append("  transforms: %s" % ", ".join(stage.transforms))
        for s in stage.statuses:
            lines.append("  %-14s %-34s %s: %s" % (s.status.upper(), s.hint,
                                                   repr(s.text) if s.text else "",
                                                   s.detail))
    if plan.unhinted_transforms:
        lines.append("")
        lines.append("%d transform(s) without hints run on workers that see no GPU"
                     % plan.unhinted_transforms)
    return "\n".join(lines)
