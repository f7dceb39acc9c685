"""Draining a running job: a splittable-DoFn stage with Beam's truncate step.

Fused without ``is_drain`` (the normal case), a stage that reads a splittable
DoFn starts ``[data input -> .../Process -> ...]``, and the SDF's residuals
come back to that data input. Beam's ``expand_sdf`` with ``is_drain`` puts
``TRUNCATE_SIZED_RESTRICTION`` in between, so the SDK calls the restriction
provider's ``truncate`` before processing: an unbounded restriction becomes
nothing (PeriodicImpulse, the default for unbounded trackers) or a bounded
rest, and bounded ones are kept whole. A job drained while running needs the
second shape for the bundles it runs from then on, with the same stage name,
data inputs, outputs and timers, so that residuals and outputs keep flowing
where they did: ``truncating_variant`` builds it from the running stage.
"""
from __future__ import annotations

from typing import Optional

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from beam_gpu_runner.bridge.beam import DATA_INPUT_URN, Stage, unique_name

PROCESS_URN = common_urns.sdf_components.PROCESS_SIZED_ELEMENTS_AND_RESTRICTIONS.urn
TRUNCATE_URN = common_urns.sdf_components.TRUNCATE_SIZED_RESTRICTION.urn


def truncating_variant(stage: Stage, components: beam_runner_api_pb2.Components
                       ) -> Optional[Stage]:
    """``stage`` with a truncate step before each SDF Process that reads one of
    its data inputs, or None when it has none (or truncates already: fused
    with ``is_drain``). Adds the truncate outputs' PCollections to
    ``components`` (a copy of the Process input's: same coder, windowing)."""
    if any(t.spec.urn == TRUNCATE_URN for t in stage.transforms):
        return None
    read_outputs = {
        pcoll for t in stage.transforms if t.spec.urn == DATA_INPUT_URN
        for pcoll in t.outputs.values()}
    names = {t.unique_name for t in stage.transforms}
    transforms: list[beam_runner_api_pb2.PTransform] = []
    changed = False
    for transform in stage.transforms:
        main_tag = _main_input_tag(transform) if transform.spec.urn == PROCESS_URN else None
        if main_tag is None or transform.inputs[main_tag] not in read_outputs:
            transforms.append(transform)
            continue
        read_pcoll = transform.inputs[main_tag]
        truncated = unique_name(
            components.pcollections, read_pcoll + "_truncate_restriction")
        components.pcollections[truncated].CopyFrom(components.pcollections[read_pcoll])
        truncate = beam_runner_api_pb2.PTransform()
        truncate.CopyFrom(transform)
        truncate.spec.urn = TRUNCATE_URN
        truncate.unique_name = unique_name(
            names, _base_name(transform.unique_name) + "/TruncateAndSizeRestriction")
        names.add(truncate.unique_name)
        truncate.outputs.clear()
        truncate.outputs["out"] = truncated
        process = beam_runner_api_pb2.PTransform()
        process.CopyFrom(transform)
        process.inputs[main_tag] = truncated
        transforms += [truncate, process]
        changed = True
    if not changed:
        return None
    return Stage(
        stage.name, transforms, stage.downstream_side_inputs, stage.must_follow,
        parent=stage.parent, environment=stage.environment)


def _main_input_tag(transform: beam_runner_api_pb2.PTransform) -> Optional[str]:
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    tags = [tag for tag in transform.inputs if tag not in payload.side_inputs]
    return tags[0] if len(tags) == 1 else None


def _base_name(process_name: str) -> str:
    """``Read/GenSequence/Process`` -> ``Read/GenSequence`` (Beam's naming)."""
    suffix = "/Process"
    return process_name[:-len(suffix)] if process_name.endswith(suffix) else process_name
