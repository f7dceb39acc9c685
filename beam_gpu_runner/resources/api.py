"""The external resource plugin contract (Flink's, FLIP-108), in Python.

Three small interfaces, as in Flink:

* ``ExternalResourceDriverFactory.create_driver(params) -> ExternalResourceDriver``
* ``ExternalResourceDriver.retrieve_resource_info(amount) -> set[ExternalResourceInfo]``
* ``ExternalResourceInfo.get_property(key)`` / ``keys()``

Factories are found by name in the entry point group
``beam_gpu_runner.external_resource_drivers`` (see ``loader``), so a third party
adds a driver without touching the runner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Protocol, runtime_checkable

ENTRY_POINT_GROUP = "beam_gpu_runner.external_resource_drivers"


@runtime_checkable
class ExternalResourceInfo(Protocol):
    """What user code sees of one resource (one GPU, one FPGA, ...)."""

    def get_property(self, key: str) -> Optional[str]:
        """The property's value, or None when the resource has no such key."""

    def keys(self) -> Iterable[str]:
        """All property names of this resource."""


@runtime_checkable
class ExternalResourceDriver(Protocol):
    def retrieve_resource_info(self, amount: int) -> set[ExternalResourceInfo]:
        """Return exactly ``amount`` resources, or raise naming why not."""


@runtime_checkable
class ExternalResourceDriverFactory(Protocol):
    def create_driver(self, params: Mapping[str, str]) -> ExternalResourceDriver:
        """Build a driver from this resource's ``param.*`` keys only."""


@dataclass(frozen=True)
class ResourceInfo:
    """The standard, picklable ExternalResourceInfo: a frozen property map.

    GPUs carry at least ``index`` (physical, PCI bus order), ``uuid`` and
    ``name``. Every property reads as an attribute too, as the repr shows it
    (a string; ``-`` in a key reads as ``_``: ``info.memory_total``);
    ``index``, ``uuid`` and ``name`` are None on a resource without them, any
    other missing one raises AttributeError naming the keys it has.
    """

    properties: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def index(self) -> Optional[str]:
        """The ``index`` property (a GPU's physical index, e.g. ``"0"``)."""
        return self.get_property("index")

    @property
    def uuid(self) -> Optional[str]:
        """The ``uuid`` property (e.g. ``"GPU-8f3c..."``; MIG devices ``"MIG-..."``)."""
        return self.get_property("uuid")

    @property
    def name(self) -> Optional[str]:
        """The ``name`` property (e.g. ``"NVIDIA H100 80GB HBM3"``)."""
        return self.get_property("name")

    def __getattr__(self, attribute: str) -> str:
        # Only called for what the class does not define: the other properties.
        if attribute.startswith("_") or attribute == "properties":
            raise AttributeError(attribute)   # copy/pickle probing; unpickling
        for key, value in self.properties:
            if key == attribute or key.replace("-", "_") == attribute:
                return value
        raise AttributeError(
            "ResourceInfo has no property %r; it has %s (get_property(key) returns "
            "None for a missing key)" % (attribute, ", ".join(
                repr(k) for k, _ in self.properties) or "none"))

    @classmethod
    def of(cls, **props: object) -> "ResourceInfo":
        return cls(tuple(sorted((k, str(v)) for k, v in props.items())))

    @classmethod
    def from_mapping(cls, props: Mapping[str, object]) -> "ResourceInfo":
        return cls(tuple(sorted((k, str(v)) for k, v in props.items())))

    def get_property(self, key: str) -> Optional[str]:
        for k, v in self.properties:
            if k == key:
                return v
        return None

    def keys(self) -> Iterable[str]:
        return [k for k, _ in self.properties]

    def as_dict(self) -> dict[str, str]:
        return dict(self.properties)

    def __repr__(self) -> str:
        return "ResourceInfo(%s)" % ", ".join("%s=%r" % kv for kv in self.properties)


class DiscoveryError(RuntimeError):
    """A driver could not produce the resources it was asked for.

    Carries one message argument only, so it pickles across processes.
    """


@runtime_checkable
class EnumeratingDriver(Protocol):
    """Optional driver extension: list every resource the host has.

    Used when ``external-resource.<name>.amount`` is not set ("all discovered").
    Drivers without it need an explicit amount.
    """

    def all_resource_info(self) -> list[ExternalResourceInfo]:
        """Every resource this driver can see, in index order (may be empty)."""
