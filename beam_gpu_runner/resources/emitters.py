"""The plan's equivalent for people who stay on Flink, Kubernetes or YARN.

One TaskManager / container must serve every stage, so each output asks for the
largest request over all hinted stages; fractional GPU counts are rounded up
(none of the three has fractional GPUs) and each rounding is noted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import yaml

from beam_gpu_runner.resources.assignment import GPU_RESOURCE
from beam_gpu_runner.resources.hints import is_vendor_only
from beam_gpu_runner.resources.report import ResourcePlan

FLINK_GPU_FACTORY = "org.apache.flink.externalresource.gpu.GPUDriverFactory"
FLINK_GPU_SCRIPT = "plugins/external-resource-gpu/nvidia-gpu-discovery.sh"
DEFAULT_K8S_KEY = "nvidia.com/gpu"
DEFAULT_YARN_KEY = "yarn.io/gpu"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
_MIB = 1 << 20


@dataclass(frozen=True)
class Emitted:
    title: str
    text: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobRequest:
    """The largest request over all stages, with notes on how it was made."""

    gpus: int = 0
    accelerator_type: Optional[str] = None
    min_ram_bytes: Optional[int] = None
    cpu_count: Optional[int] = None
    notes: tuple[str, ...] = ()


def job_request(plan: ResourcePlan) -> JobRequest:
    gpus = 0
    types: list[str] = []
    ram: Optional[int] = None
    cpus: Optional[int] = None
    notes: list[str] = []
    for stage in plan.stages:
        req = stage.requirements
        if req.needs_gpu:
            whole = math.ceil(req.gpu_count)
            if whole != req.gpu_count:
                notes.append("stage %s: accelerator count %g rounded up to %d (no "
                             "fractional GPUs there)" % (stage.name, req.gpu_count, whole))
            gpus = max(gpus, whole)
            # A vendor-only type ("nvidia") names no model: nothing to select on.
            if (req.accelerator_type and not is_vendor_only(req.accelerator_type)
                    and req.accelerator_type not in types):
                types.append(req.accelerator_type)
        if req.min_ram_bytes:
            ram = max(ram or 0, req.min_ram_bytes)
        if req.cpu_count:
            cpus = max(cpus or 0, req.cpu_count)
    if len(types) > 1:
        notes.append("stages ask for different accelerator types (%s); one container "
                     "type cannot satisfy all, %s is used" % (", ".join(types), types[0]))
    return JobRequest(gpus, types[0] if types else None, ram, cpus, tuple(notes))


def _keys(plan: ResourcePlan) -> tuple[str, str]:
    spec = plan.config.get(GPU_RESOURCE)
    return ((spec.kubernetes_config_key if spec else None) or DEFAULT_K8S_KEY,
            (spec.yarn_config_key if spec else None) or DEFAULT_YARN_KEY)


def flink_config(plan: ResourcePlan) -> Emitted:
    """flink-conf.yaml lines for Flink's GPU plugin (FLIP-108)."""
    job = job_request(plan)
    k8s_key, yarn_key = _keys(plan)
    lines: list[str] = []
    notes = list(job.notes)
    if job.gpus:
        lines += [
            "external-resources: %s" % GPU_RESOURCE,
            "external-resource.gpu.amount: %d" % job.gpus,
            "external-resource.gpu.driver-factory.class: %s" % FLINK_GPU_FACTORY,
            "external-resource.gpu.param.discovery-script.path: %s" % FLINK_GPU_SCRIPT,
            # Flink's script reads -mode; its docs say --enable-coordination.
            "external-resource.gpu.param.discovery-script.args: --enable-coordination-mode",
            "external-resource.gpu.kubernetes.config-key: %s" % k8s_key,
            "external-resource.gpu.yarn.config-key: %s" % yarn_key,
        ]
        if job.accelerator_type:
            notes.append("Flink has no accelerator type; run TaskManagers on %s nodes"
                         % job.accelerator_type)
    if job.min_ram_bytes:
        lines.append("taskmanager.memory.process.size: %dm"
                     % math.ceil(job.min_ram_bytes / _MIB))
    if job.cpu_count:
        lines += ["kubernetes.taskmanager.cpu: %d" % job.cpu_count,
                  "yarn.containers.vcores: %d" % job.cpu_count]
    return Emitted("Flink configuration (flink-conf.yaml)",
                   "\n".join(lines) or "# no resource hints: nothing to configure",
                   tuple(notes))


def kubernetes_resources(plan: ResourcePlan) -> Emitted:
    """A container's ``resources`` (and a GKE nodeSelector for the type)."""
    job = job_request(plan)
    k8s_key, _ = _keys(plan)
    limits: dict[str, object] = {}
    requests: dict[str, object] = {}
    if job.gpus:
        limits[k8s_key] = job.gpus
    if job.cpu_count:
        limits["cpu"] = requests["cpu"] = str(job.cpu_count)
    if job.min_ram_bytes:
        limits["memory"] = requests["memory"] = "%dMi" % math.ceil(
            job.min_ram_bytes / _MIB)
    doc: dict[str, object] = {}
    if limits:
        doc["resources"] = {"limits": limits, **({"requests": requests} if requests else {})}
    notes = list(job.notes)
    if job.gpus and job.accelerator_type:
        doc["nodeSelector"] = {GKE_ACCELERATOR_LABEL: job.accelerator_type}
        notes.append("nodeSelector %s is GKE's label; use your cluster's GPU node label "
                     "elsewhere" % GKE_ACCELERATOR_LABEL)
    text = yaml.safe_dump(doc, sort_keys=False).strip() if doc else \
        "# no resource hints: nothing to request"
    return Emitted("Kubernetes container resources", text, tuple(notes))


def yarn_resources(plan: ResourcePlan) -> Emitted:
    """A YARN container resource request (``-container_resources`` form and YAML)."""
    job = job_request(plan)
    _, yarn_key = _keys(plan)
    request: dict[str, int] = {}
    if job.min_ram_bytes:
        request["memory-mb"] = math.ceil(job.min_ram_bytes / _MIB)
    if job.cpu_count:
        request["vcores"] = job.cpu_count
    if job.gpus:
        request[yarn_key] = job.gpus
    notes = list(job.notes)
    if job.gpus:
        notes.append("YARN needs GPU scheduling enabled (yarn.resource-types=%s)" % yarn_key)
    text = ("container_resources: %s" % ",".join("%s=%d" % kv for kv in request.items())
            if request else "# no resource hints: nothing to request")
    return Emitted("YARN resource request", text, tuple(notes))


def emit_all(plan: ResourcePlan) -> list[Emitted]:
    return [flink_config(plan), kubernetes_resources(plan), yarn_resources(plan)]


def format_emitted(emitted: Emitted) -> str:
    lines = ["# %s" % emitted.title, emitted.text]
    lines += ["# note: %s" % n for n in emitted.notes]
    return "\n".join(lines)
