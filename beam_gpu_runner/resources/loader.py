"""Find and build external resource drivers (entry points or ``module:Class``)."""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import Any

from beam_gpu_runner.resources.api import (
    ENTRY_POINT_GROUP,
    ExternalResourceDriver,
    ExternalResourceDriverFactory,
)
from beam_gpu_runner.resources.config import ResourceSpec

_LOG = logging.getLogger(__name__)

#: Flink's class names, so that a copied flink-conf.yaml works unchanged.
FLINK_ALIASES = {
    "org.apache.flink.externalresource.gpu.GPUDriverFactory": "gpu",
}


class DriverLoadError(RuntimeError):
    """A driver factory could not be found, imported or run (one message arg)."""


def known_factories() -> dict[str, str]:
    """Entry point name -> ``module:Class`` for every installed driver factory."""
    return {ep.name: ep.value
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _where(resource: str, class_string: str) -> str:
    return ("resource %r (external-resource.%s.driver-factory.class=%s)"
            % (resource, resource, class_string))


def load_factory_class(resource: str, class_string: str) -> Any:
    """The factory class named by ``class_string`` (entry point name or module:Class)."""
    target = FLINK_ALIASES.get(class_string, class_string)
    where = _where(resource, class_string)
    if ":" not in target:
        eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
               if ep.name == target]
        if eps:
            try:
                return eps[0].load()
            except Exception as exc:  # any import-time failure of a plugin
                raise DriverLoadError(
                    "loading driver factory for %s: entry point %s=%s failed to "
                    "import: %s: %s" % (where, eps[0].name, eps[0].value,
                                        type(exc).__name__, exc)) from None
        if "." not in target:
            known = ", ".join(sorted(known_factories())) or "(none installed)"
            raise DriverLoadError(
                "loading driver factory for %s: no driver factory named %r in entry "
                "point group %s; known: %s; or give module:Class"
                % (where, target, ENTRY_POINT_GROUP, known))
        module_name, _, attr = target.rpartition(".")
    else:
        module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise DriverLoadError(
            "loading driver factory for %s: importing module %r failed: %s: %s"
            % (where, module_name, type(exc).__name__, exc)) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise DriverLoadError(
            "loading driver factory for %s: module %r has no attribute %r"
            % (where, module_name, attr)) from None


def load_factory(resource: str, class_string: str) -> ExternalResourceDriverFactory:
    """Instantiate the factory (no-argument constructor, as in Flink)."""
    cls = load_factory_class(resource, class_string)
    where = _where(resource, class_string)
    try:
        factory = cls()
    except Exception as exc:
        raise DriverLoadError(
            "creating driver factory for %s: %r() raised %s: %s"
            % (where, cls, type(exc).__name__, exc)) from None
    if not callable(getattr(factory, "create_driver", None)):
        raise DriverLoadError(
            "creating driver factory for %s: %r has no create_driver(params) method; "
            "implement ExternalResourceDriverFactory" % (where, cls))
    return factory  # type: ignore[no-any-return]


def load_driver(spec: ResourceSpec) -> ExternalResourceDriver:
    """Build ``spec``'s driver, handing it only its own ``param.*`` keys."""
    factory = load_factory(spec.name, spec.driver_factory)
    where = _where(spec.name, spec.driver_factory)
    try:
        driver = factory.create_driver(spec.params)
    except Exception as exc:
        raise DriverLoadError(
            "creating driver for %s with params %s: %s: %s"
            % (where, spec.params, type(exc).__name__, exc)) from None
    if not callable(getattr(driver, "retrieve_resource_info", None)):
        raise DriverLoadError(
            "creating driver for %s: create_driver returned %r, which has no "
            "retrieve_resource_info(amount) method" % (where, driver))
    _LOG.debug("loaded driver %r for resource %s", driver, spec.name)
    return driver
