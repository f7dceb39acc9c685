"""How many workers each GPU stage of a job gets: one pure planner for run and plan.

A job's GPU pools (one per hinted environment) are sized together, so that
all their workers can hold their devices at once: a job never waits on itself
for a device. ``plan_gpus`` decides it from a ``DeviceInventory`` (the local
allocator's discovered devices, or a Ray cluster's GPUs) and says, per pool,
whether the hint is honoured, degraded (a shared device) or cannot be met,
with the reason. ``GpuRunner.run`` sizes its pools and fails fast from these
verdicts, and ``beam-gpu-runner plan`` prints the same verdicts, so what plan
says is what run does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping, Protocol, Sequence, runtime_checkable

from beam_gpu_runner.resources.requirements import StageRequirements

HONOURED = "honoured"
DEGRADED = "degraded"
UNSATISFIABLE = "unsatisfiable"

_EPS = 1e-9


@runtime_checkable
class DeviceInventory(Protocol):
    """The GPUs a job's workers may use (the local allocator; Ray placement)."""

    def matching_devices(self, requirements: StageRequirements) -> int:
        """GPUs of the type ``requirements`` asks for."""

    def describe_devices(self) -> str:
        """What there is, for messages, e.g. "driver 'testing' found 2 GPU(s) (...)"."""

    def more_devices_hint(self) -> str:
        """How to get more, for messages, e.g. a config key or "a bigger cluster"."""


@dataclass(frozen=True)
class GpuRequest:
    """One GPU pool of a job: its key, its stages (labels), what a worker needs."""

    key: Hashable
    stages: tuple[str, ...]
    requirements: StageRequirements
    hint: str = ""


@dataclass(frozen=True)
class GpuVerdict:
    status: str        # HONOURED / DEGRADED / UNSATISFIABLE
    workers: int       # pool size (0 when unsatisfiable)
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != UNSATISFIABLE


def _units(req: StageRequirements) -> float:
    """Devices one worker takes (a fraction for shared devices)."""
    return req.gpu_count if req.gpu_count < 1 else float(req.whole_devices)


def _what(req: StageRequirements) -> str:
    what = ("a %g share of one GPU" % req.gpu_count if req.gpu_count < 1
            else "%d GPU(s)" % req.whole_devices)
    return what + (" of type %s" % req.accelerator_type if req.accelerator_type else "")


def plan_gpus(requests: Sequence[GpuRequest], inventory: DeviceInventory,
              num_workers: int) -> dict[Hashable, GpuVerdict]:
    """Per pool: its size and verdict; see the module docstring.

    One worker per pool first, then more while devices last, up to
    ``num_workers`` each. Each pool is bounded by its own matching devices and
    the job's total by the largest matching set: exact when all pools ask for
    the same type, conservative on hosts with mixed GPU models.
    """
    matching = {r.key: inventory.matching_devices(r.requirements) for r in requests}
    sizes = {r.key: 0 for r in requests}
    used = {r.key: 0.0 for r in requests}
    total = max(matching.values(), default=0)
    spent = 0.0
    grew = True
    while grew:
        grew = False
        for request in requests:
            units = _units(request.requirements)
            key = request.key
            if sizes[key] >= num_workers:
                continue
            if (used[key] + units <= matching[key] + _EPS
                    and spent + units <= total + _EPS):
                sizes[key] += 1
                used[key] += units
                spent += units
                grew = True
    verdicts = {}
    for request in requests:
        req, key = request.requirements, request.key
        need = req.whole_devices
        head = "needs %s per worker" % _what(req)
        if matching[key] < need:
            verdicts[key] = GpuVerdict(UNSATISFIABLE, 0, (
                "%s; %s, of which %d match%s; %s" % (
                    head, inventory.describe_devices(), matching[key],
                    " the type" if req.accelerator_type else "",
                    "change the hint's type or count" if not matching[key] else
                    "lower the hint's count or configure %s" % inventory.more_devices_hint())))
        elif sizes[key] == 0:
            others = [s for r in requests if r.key != key for s in r.stages]
            verdicts[key] = GpuVerdict(UNSATISFIABLE, 0, (
                "%s; this job's other GPU stages %s need all %d matching device(s): "
                "configure more (%s) or lower the hints' counts"
                % (head, others, matching[key], inventory.more_devices_hint())))
        elif req.gpu_count < 1:
            verdicts[key] = GpuVerdict(DEGRADED, sizes[key], (
                "shares one GPU: memory budget %g of it per worker "
                "(XLA_PYTHON_CLIENT_MEM_FRACTION, preallocation off), no compute "
                "isolation; %d worker(s) on %d matching GPU(s)"
                % (req.gpu_count, sizes[key], matching[key])))
        else:
            verdicts[key] = GpuVerdict(HONOURED, sizes[key], (
                "%s leased per worker from %d matching; %d worker(s) of this stage at once"
                % (_what(req), matching[key], sizes[key])))
    return verdicts


class CountingInventory:
    """A fixed inventory by accelerator type: for tests and for clusters that
    report counts (``{"nvidia-h100": 4}``; the key ``""`` counts every GPU)."""

    def __init__(self, counts: Mapping[str, int], hint: str = "more devices") -> None:
        self._counts = dict(counts)
        self._hint = hint

    def matching_devices(self, requirements: StageRequirements) -> int:
        wanted = requirements.accelerator_type or ""
        if wanted in self._counts:
            return self._counts[wanted]
        return self._counts.get("", 0) if not wanted else 0

    def describe_devices(self) -> str:
        return "the inventory has %s" % (
            ", ".join("%d x %s" % (n, t or "any") for t, n in self._counts.items())
            or "no GPUs")

    def more_devices_hint(self) -> str:
        return self._hint


__all__ = ["CountingInventory", "DEGRADED", "DeviceInventory", "GpuRequest", "GpuVerdict",
           "HONOURED", "UNSATISFIABLE", "plan_gpus"]
