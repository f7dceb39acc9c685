"""What a stage needs from a worker, translated from Beam resource hints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class StageRequirements:
    """Per-stage requirements; the worker pool is keyed by (environment, these).

    ``gpu_count`` may be fractional (``count:0.5``): workers then share one
    device with a per-worker memory budget of ``gpu_count`` of it.
    """

    gpu_count: float = 0.0
    accelerator_type: Optional[str] = None   # e.g. "nvidia-h100"
    install_driver: bool = False              # "install-nvidia-driver" flag (advisory)
    min_ram_bytes: Optional[int] = None
    cpu_count: Optional[int] = None
    max_active_bundles_per_worker: Optional[int] = None

    @property
    def needs_gpu(self) -> bool:
        return self.gpu_count > 0

    @property
    def whole_devices(self) -> int:
        """Devices a worker leases: 1 for a fraction, N for count:N."""
        if self.gpu_count <= 0:
            return 0
        if self.gpu_count < 1:
            return 1
        return int(-(-self.gpu_count // 1))

    def describe(self) -> str:
        parts = []
        if self.needs_gpu:
            parts.append("gpu=%g%s" % (
                self.gpu_count,
                "(%s)" % self.accelerator_type if self.accelerator_type else ""))
        if self.min_ram_bytes:
            parts.append("min_ram=%d" % self.min_ram_bytes)
        if self.cpu_count:
            parts.append("cpu=%d" % self.cpu_count)
        return ",".join(parts) or "none"


NO_REQUIREMENTS = StageRequirements()
