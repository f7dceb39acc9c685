"""Chaining: unhinted transforms next to an accelerator stage run inside it.

Flink chains operators and lets every slot of a TaskManager see its GPUs, so
a whole ``read -> preprocess -> infer -> write`` job runs as one task per slot
and no byte crosses a process. Beam's fusion refuses to fuse transforms whose
environments differ, and every set of resource hints is an environment of its
own, so by default a hinted transform is a stage alone, and everything it
reads and writes crosses the driver twice.

This fusion phase runs just before Beam's ``greedily_fuse``. It groups the
(not yet fused) stages into *chains*: stages linked by a PCollection that one
produces and the other reads as its main input. A GroupByKey (its write and
read are separate stages with no PCollection between them), a side input and
a runner primitive's buffer end a chain. When a chain holds exactly one hinted
environment, its unhinted stages move into that environment, and Beam's
fusion then fuses what it can into the accelerator's stages. A chain with
several different hints is left alone. An unbounded splittable DoFn (a
streaming source) is never chained: it is one restriction, read by one
bundle at a time, so fused with a slower accelerator step it would hold the
stage to one device, where kept apart its output is cut across all of them.
(A bounded source is chained: its running bundles are split for idle
workers.) ``--accelerator_chaining=off`` keeps
every hinted transform apart (Dataflow's "right fitting"), for CPU-heavy
neighbours that should not take an accelerator worker's place.
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator, Mapping, Optional

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.utils import proto_utils

from beam_gpu_runner.bridge.beam import PAR_DO_URNS, Stage, TransformContext

_LOG = logging.getLogger(__name__)

SDF_PROCESS_URN = common_urns.sdf_components.PROCESS_SIZED_ELEMENTS_AND_RESTRICTIONS.urn


class _Chains:
    """Union-find over stage names."""

    def __init__(self, names: Iterable[str]) -> None:
        self._parent = {n: n for n in names}

    def find(self, name: str) -> str:
        while self._parent[name] != name:
            self._parent[name] = self._parent[self._parent[name]]
            name = self._parent[name]
        return name

    def join(self, a: str, b: str) -> None:
        self._parent[self.find(a)] = self.find(b)


def _main_inputs(transform: beam_runner_api_pb2.PTransform) -> list[str]:
    side: set[str] = set()
    if transform.spec.urn in PAR_DO_URNS:
        payload = proto_utils.parse_Bytes(transform.spec.payload,
                                          beam_runner_api_pb2.ParDoPayload)
        side = set(payload.side_inputs)
    return [pcoll for tag, pcoll in transform.inputs.items() if tag not in side]


def is_hinted(components: beam_runner_api_pb2.Components, environment: Optional[str]) -> bool:
    return bool(environment and environment in components.environments
                and components.environments[environment].resource_hints)


def reads_unbounded_source(stage: Stage, components: beam_runner_api_pb2.Components
                           ) -> bool:
    """Whether the stage runs a splittable DoFn whose output is unbounded."""
    return any(t.spec.urn == SDF_PROCESS_URN
               and any(components.pcollections[p].is_bounded
                       == beam_runner_api_pb2.IsBounded.UNBOUNDED
                       for p in t.outputs.values())
               for t in stage.transforms)


def chain_targets(stages: list[Stage], components: beam_runner_api_pb2.Components
                  ) -> dict[str, str]:
    """Stage name -> the hinted environment its chain moves it into."""
    chains = _Chains(s.name for s in stages)
    sources = {s.name for s in stages if reads_unbounded_source(s, components)}
    producer: dict[str, str] = {}
    for stage in stages:
        for transform in stage.transforms:
            for pcoll in transform.outputs.values():
                producer[pcoll] = stage.name
    for stage in stages:
        if stage.name in sources:
            continue
        for transform in stage.transforms:
            for pcoll in _main_inputs(transform):
                if pcoll in producer and producer[pcoll] not in sources:
                    chains.join(producer[pcoll], stage.name)
    hinted: dict[str, set[str]] = {}
    for stage in stages:
        if is_hinted(components, stage.environment):
            hinted.setdefault(chains.find(stage.name), set()).add(str(stage.environment))
    targets = {}
    for stage in stages:
        envs = hinted.get(chains.find(stage.name), set())
        if (len(envs) == 1 and stage.environment and stage.name not in sources
                and not is_hinted(components, stage.environment)):
            targets[stage.name] = next(iter(envs))
    return targets


def chain_into_accelerators(stages: Iterable[Stage], context: TransformContext
                            ) -> Iterator[Stage]:
    """The fusion phase; see the module docstring."""
    stages = list(stages)
    components = context.components
    targets = chain_targets(stages, components)
    for stage in stages:
        target = targets.get(stage.name)
        if target is not None:
            stage.environment = target
            for transform in stage.transforms:
                if transform.environment_id:
                    transform.environment_id = target
        yield stage
    if targets:
        _LOG.debug("Chaining: %d stage(s) moved into accelerator environments", len(targets))


def chained_transforms(stage_transforms: Iterable[str], stage_environment: Optional[str],
                       original: beam_runner_api_pb2.Components,
                       ids_by_name: Mapping[str, str]) -> list[str]:
    """The user transforms of a fused stage that chaining moved onto its
    accelerator workers (they had no hints of their own)."""
    if not is_hinted(original, stage_environment):
        return []
    out = []
    for name in stage_transforms:
        transform_id = ids_by_name.get(name)
        if transform_id is None:
            continue
        env = original.transforms[transform_id].environment_id
        if env and env != stage_environment and not is_hinted(original, env):
            out.append(name)
    return out


__all__ = ["chain_into_accelerators", "chain_targets", "chained_transforms", "is_hinted"]
