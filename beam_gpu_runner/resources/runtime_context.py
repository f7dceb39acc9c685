"""What a DoFn sees of its worker's external resources.

The runner hands each worker process its resources through one environment
variable, ``BEAM_GPU_RUNNER_RESOURCES`` (JSON)::

    {"worker_id": "worker-3",
     "resources": {"gpu": [{"index": "2", "uuid": "GPU-...", "name": "NVIDIA H100 80GB HBM3"}]}}

together with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and ``CUDA_VISIBLE_DEVICES``.
Under any other runner the variable is absent and the context is empty, so the
same DoFn runs on the CPU there.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from beam_gpu_runner.resources.api import ResourceInfo

_LOG = logging.getLogger(__name__)

RESOURCES_ENV = "BEAM_GPU_RUNNER_RESOURCES"


class RuntimeContextError(ValueError):
    """The worker's resource description is malformed."""


@dataclass(frozen=True)
class RuntimeContext:
    worker_id: Optional[str] = None
    resources: Mapping[str, tuple[ResourceInfo, ...]] = field(default_factory=dict)
    visible_devices: Optional[tuple[str, ...]] = None

    def external_resource_infos(self, name: str) -> set[ResourceInfo]:
        """Flink's getExternalResourceInfos: the resources named ``name``.

        An unknown name gives an empty set, as in Flink.
        """
        return set(self.resources.get(name, ()))

    def gpus(self) -> list[ResourceInfo]:
        """This worker's GPUs, sorted by physical index."""
        return sorted(
            self.resources.get("gpu", ()),
            key=lambda info: int(info.get_property("index") or 0))

    def device_ordinal(self, physical_index: int | str) -> int:
        """Map a physical GPU index to the ordinal a CUDA process sees.

        Under ``CUDA_VISIBLE_DEVICES=2,3`` physical GPU 3 is ordinal 1 inside
        this process; using 3 is the classic "invalid device ordinal" bug.
        """
        index = str(physical_index)
        if self.visible_devices is None:
            return int(index)
        if index not in self.visible_devices:
            # A MIG instance is listed by its MIG- UUID; accept its parent index
            # when exactly one of this worker's GPUs has it.
            matches = [visible_id(g) for g in self.gpus()
                       if g.get_property("index") == index]
            if len(matches) == 1 and matches[0] in self.visible_devices:
                return self.visible_devices.index(matches[0])
        if index not in self.visible_devices:
            raise RuntimeContextError(
                "device_ordinal: physical GPU index %s is not in this worker's "
                "CUDA_VISIBLE_DEVICES=%s; use an index from "
                "external_resource_infos('gpu')" % (index, ",".join(self.visible_devices)))
        return self.visible_devices.index(index)

    def jax_device(self, which: int = 0) -> Any:
        """The JAX device for this worker's ``which``-th GPU; CPU when it has none.

        Falls back to JAX's first CPU device when the worker holds no GPU or
        when JAX has no GPU backend (testing driver, CPU-only jaxlib).
        """
        import jax  # imported lazily: most of the runner never needs JAX

        gpus = self.gpus()
        if not gpus:
            return jax.devices("cpu")[0]
        if which >= len(gpus):
            raise RuntimeContextError(
                "jax_device: asked for GPU #%d but this worker holds %d (%s)"
                % (which, len(gpus), [g.get_property("index") for g in gpus]))
        try:
            cuda = jax.devices("gpu")
        except RuntimeError:
            _LOG.info("jax_device: no JAX GPU backend; using CPU for GPU %s",
                      gpus[which].get_property("index"))
            return jax.devices("cpu")[0]
        ordinal = self.device_ordinal(visible_id(gpus[which]) or "0")
        if ordinal >= len(cuda):
            raise RuntimeContextError(
                "jax_device: GPU index %s maps to ordinal %d but JAX sees %d GPU(s)"
                % (gpus[which].get_property("index"), ordinal, len(cuda)))
        return cuda[ordinal]

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry this context to a worker."""
        env = {RESOURCES_ENV: json.dumps({
            "worker_id": self.worker_id,
            "resources": {
                name: [info.as_dict() for info in infos]
                for name, infos in self.resources.items()},
        }, sort_keys=True)}
        gpus = self.gpus()
        if gpus:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_id(g) for g in gpus)
        return env


def visible_id(info: ResourceInfo) -> str:
    """How ``CUDA_VISIBLE_DEVICES`` names this GPU: its index, or for a MIG
    instance (which has no index of its own) its ``MIG-...`` UUID."""
    uuid = info.get_property("uuid") or ""
    if uuid.startswith("MIG-"):
        return uuid
    return info.get_property("index") or ""


def from_env(environ: Mapping[str, str]) -> RuntimeContext:
    raw = environ.get(RESOURCES_ENV)
    if not raw:
        return RuntimeContext()
    try:
        doc = json.loads(raw)
        resources = {
            str(name): tuple(ResourceInfo.from_mapping(p) for p in infos)
            for name, infos in doc.get("resources", {}).items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise RuntimeContextError(
            "runtime_context: %s is not the JSON the runner writes (%r): %s"
            % (RESOURCES_ENV, raw[:200], exc)) from exc
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    return RuntimeContext(
        worker_id=doc.get("worker_id"),
        resources=resources,
        visible_devices=tuple(v.strip() for v in visible.split(",") if v.strip())
        if visible else None)


def runtime_context() -> RuntimeContext:
    """The calling worker's context (empty outside GpuRunner's workers)."""
    return from_env(os.environ)
