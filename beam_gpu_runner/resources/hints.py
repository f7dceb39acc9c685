"""Beam resource hints -> ``StageRequirements``, and accelerator type matching.

Beam keeps hints in each environment's ``resource_hints`` map (urn -> bytes),
e.g. ``beam:resources:accelerator:v1 -> b"type:nvidia-h100;count:1;install-nvidia-driver"``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from beam_gpu_runner.resources.requirements import StageRequirements

# Beam's urns (apache_beam.portability.common_urns.resource_hints; a test checks
# they agree), spelled out so that the allocator does not import Beam.
ACCELERATOR_URN = "beam:resources:accelerator:v1"
MIN_RAM_URN = "beam:resources:min_ram_bytes:v1"
CPU_COUNT_URN = "beam:resources:cpu_count:v1"
MAX_ACTIVE_BUNDLES_URN = "beam:resources:max_active_bundles_per_worker:v1"

#: urn -> the name used in ``with_resource_hints(...)``.
HINT_NAMES = {
    ACCELERATOR_URN: "accelerator",
    MIN_RAM_URN: "min_ram",
    CPU_COUNT_URN: "cpu_count",
    MAX_ACTIVE_BUNDLES_URN: "max_active_bundles_per_worker",
}

INSTALL_DRIVER_FLAG = "install-nvidia-driver"
# Tokens that name the vendor, brand or a cloud machine variant, not the chip.
_NON_MODEL_TOKENS = frozenset({"nvidia", "tesla", "gpu", "mega"})
_MEMORY_TOKEN = re.compile(r"^(\d+)gb$")


class InvalidHintError(ValueError):
    """A resource hint Beam passed is malformed (one message arg; pickles)."""


@dataclass(frozen=True)
class AcceleratorHint:
    text: str
    type: Optional[str]
    count: float
    install_driver: bool
    other_flags: tuple[str, ...] = ()   # e.g. use-nvidia-mps: listed, not acted on


def _where(transforms: Sequence[str]) -> str:
    if not transforms:
        return "(transform unknown)"
    shown = ", ".join(repr(t) for t in transforms[:5])
    return "transform(s) %s%s" % (shown, " and %d more" % (len(transforms) - 5)
                                  if len(transforms) > 5 else "")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def parse_accelerator(value: bytes | str, transforms: Sequence[str] = ()) -> AcceleratorHint:
    """Parse ``type:T;count:N;install-nvidia-driver`` (count defaults to 1)."""
    text = _text(value).strip()
    fix = ("write it as accelerator=\"type:nvidia-h100;count:1\" (count a whole "
           "number >= 1 or a fraction between 0 and 1)")
    if not text:
        raise InvalidHintError("accelerator hint %r on %s is empty; %s"
                               % (text, _where(transforms), fix))
    accel_type: Optional[str] = None
    count = 1.0
    install = False
    flags: list[str] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, sep, val = part.partition(":")
        key, val = key.strip().lower(), val.strip()
        if key == INSTALL_DRIVER_FLAG:   # also install-nvidia-driver:VERSION
            install = True
        elif not sep:
            flags.append(key)
        elif key == "type":
            if not val:
                raise InvalidHintError("accelerator hint %r on %s has an empty type; %s"
                                       % (text, _where(transforms), fix))
            accel_type = val.lower()
        elif key == "count":
            try:
                count = float(val)
            except ValueError:
                count = math.nan
            if not (math.isfinite(count) and count > 0) or (
                    count > 1 and not count.is_integer()):
                raise InvalidHintError("accelerator hint %r on %s has count %r; %s"
                                       % (text, _where(transforms), val, fix))
        else:   # e.g. a Dataflow option we do not act on; the report lists it
            flags.append(part)
    return AcceleratorHint(text, accel_type, count, install, tuple(flags))


def _whole(urn: str, value: bytes | str, transforms: Sequence[str], minimum: int) -> int:
    text = _text(value).strip()
    try:
        number = int(text)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise InvalidHintError("%s hint %r on %s must be a whole number >= %d"
                               % (HINT_NAMES.get(urn, urn), text, _where(transforms),
                                  minimum))
    return number


def requirements_from_hints(hints: Mapping[str, bytes],
                            transforms: Sequence[str] = ()) -> StageRequirements:
    """The requirements of a stage whose environment carries ``hints``.

    Unknown urns are ignored here (the report lists them).
    """
    accel = parse_accelerator(hints[ACCELERATOR_URN], transforms) \
        if ACCELERATOR_URN in hints else None
    return StageRequirements(
        gpu_count=accel.count if accel else 0.0,
        accelerator_type=accel.type if accel else None,
        install_driver=accel.install_driver if accel else False,
        min_ram_bytes=_whole(MIN_RAM_URN, hints[MIN_RAM_URN], transforms, 0)
        if MIN_RAM_URN in hints else None,
        cpu_count=_whole(CPU_COUNT_URN, hints[CPU_COUNT_URN], transforms, 1)
        if CPU_COUNT_URN in hints else None,
        max_active_bundles_per_worker=_whole(
            MAX_ACTIVE_BUNDLES_URN, hints[MAX_ACTIVE_BUNDLES_URN], transforms, 1)
        if MAX_ACTIVE_BUNDLES_URN in hints else None)


def accelerator_text(hints: Mapping[str, bytes]) -> Optional[str]:
    """The raw accelerator hint text, if any (for messages)."""
    raw = hints.get(ACCELERATOR_URN)
    return None if raw is None else _text(raw)


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def is_vendor_only(accelerator_type: Optional[str]) -> bool:
    """True for types that name no model ("nvidia", "nvidia-gpu"): any GPU will do."""
    tokens = _tokens(accelerator_type or "")
    return bool(tokens) and all(t in _NON_MODEL_TOKENS for t in tokens)


def accelerator_matches(accelerator_type: Optional[str], device_name: Optional[str],
                        memory_bytes: Optional[int] = None) -> bool:
    """Whether a device called ``device_name`` is of Beam/GCP type ``accelerator_type``.

    Every model token of the type must be a whole token of the name, so
    ``nvidia-h100`` matches "NVIDIA H100 80GB HBM3", ``nvidia-tesla-t4`` matches
    "Tesla T4", and ``nvidia-l4`` does not match "NVIDIA L40S". A memory token
    (``nvidia-a100-80gb``) must equal the name's; when the name has none (e.g.
    "NVIDIA H200") it is checked against ``memory_bytes`` (at least 90% of the
    decimal size), or accepted when that is unknown. No type, or a vendor-only
    type (``nvidia``, ``nvidia-gpu``), matches any named device the GPU driver found;
    a device without a name matches only no type.
    """
    if not accelerator_type:
        return True
    if not device_name:
        return False
    if is_vendor_only(accelerator_type):
        # Any device the GPU driver found: NVML only reports NVIDIA devices,
        # and their names do not always say "NVIDIA" ("Tesla T4").
        return True
    wanted = [t for t in _tokens(accelerator_type) if t not in _NON_MODEL_TOKENS]
    have = set(_tokens(device_name))
    name_memory = {t for t in have if _MEMORY_TOKEN.match(t)}
    for token in wanted:
        mem = _MEMORY_TOKEN.match(token)
        if mem and not name_memory:
            if memory_bytes is not None and memory_bytes < 0.9 * int(mem.group(1)) * 1e9:
                return False
            continue
        if token not in have:
            return False
    return True
