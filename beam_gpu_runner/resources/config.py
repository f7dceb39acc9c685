"""External resource configuration with Flink's keys (FLIP-108).

Sources, later ones winning key by key:

1. the built-in default: ``external-resources: gpu`` with driver ``gpu``;
2. a YAML file (``--external_resources_config``), flat
   (``external-resource.gpu.amount: 2``) or nested
   (``external-resource: {gpu: {amount: 2}}``);
3. repeated ``key=value`` overrides (``--external_resource``).

Keys::

    external-resources                              gpu;fpga
    external-resource.<name>.amount                 whole number >= 1
    external-resource.<name>.driver-factory.class   entry point name or module:Class
    external-resource.<name>.param.<key>            handed to that driver only
    external-resource.<name>.kubernetes.config-key  e.g. nvidia.com/gpu
    external-resource.<name>.yarn.config-key        e.g. yarn.io/gpu

``amount`` is how many resources the runner takes from the driver on this host
(each worker then gets what its stage's hint asks for); without it the runner
uses every resource the driver discovers, which may be none.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

_LOG = logging.getLogger(__name__)

LIST_KEY = "external-resources"
PREFIX = "external-resource."
DEFAULT_RESOURCE = "gpu"
DEFAULT_DRIVER = "gpu"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_SIMPLE_SUFFIXES = ("amount", "driver-factory.class", "kubernetes.config-key",
                    "yarn.config-key")


class ConfigError(ValueError):
    """A malformed external resource configuration (message names key, value, fix)."""


TESTING_DRIVER = "testing"


def fake_gpu_keys(count: int, device_name: Optional[str] = None) -> list[str]:
    """The ``key=value`` overrides that fake ``count`` GPUs with the testing
    driver (``--fake_gpus``); ``device_name`` defaults to the driver's own
    (``NVIDIA H100 80GB HBM3``, so ``type:nvidia-h100`` hints match).

    Each is what one ``--external_resource`` takes, so
    ``ExternalResourceConfig.load(None, fake_gpu_keys(2))`` is the config.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError("fake GPUs: the count must be a whole number >= 1 (e.g. "
                          "--fake_gpus=2), got %r" % (count,))
    prefix = "%s%s." % (PREFIX, DEFAULT_RESOURCE)
    keys = ["%s=%s" % (LIST_KEY, DEFAULT_RESOURCE),
            "%sdriver-factory.class=%s" % (prefix, TESTING_DRIVER),
            "%sparam.num-devices=%d" % (prefix, count)]
    if device_name is not None:
        keys.append("%sparam.device-name=%s" % (prefix, device_name))
    return keys


@dataclass(frozen=True)
class ResourceSpec:
    """One configured external resource (``external-resource.<name>.*``)."""

    name: str
    driver_factory: str
    amount: Optional[int] = None          # None: everything the driver discovers
    param_items: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    kubernetes_config_key: Optional[str] = None
    yarn_config_key: Optional[str] = None

    @property
    def params(self) -> dict[str, str]:
        """This resource's ``param.*`` keys with the prefix stripped."""
        return dict(self.param_items)

    def key(self, suffix: str) -> str:
        """The full config key for ``suffix``, e.g. ``external-resource.gpu.amount``."""
        return "%s%s.%s" % (PREFIX, self.name, suffix)


@dataclass(frozen=True)
class ExternalResourceConfig:
    resources: tuple[ResourceSpec, ...] = ()
    explicit: bool = False   # False: built-in default, nothing configured

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.resources)

    def get(self, name: str) -> Optional[ResourceSpec]:
        for spec in self.resources:
            if spec.name == name:
                return spec
        return None

    @classmethod
    def default(cls) -> "ExternalResourceConfig":
        return cls((ResourceSpec(DEFAULT_RESOURCE, DEFAULT_DRIVER),), explicit=False)

    @classmethod
    def from_mapping(cls, flat: Mapping[str, Any], *, source: str = "config",
                     explicit: bool = True) -> "ExternalResourceConfig":
        """Build from flat Flink keys (values may be YAML scalars)."""
        values = {str(k): v for k, v in flat.items()}
        names = _parse_names(values.get(LIST_KEY, DEFAULT_RESOURCE), source)
        per_name: dict[str, dict[str, Any]] = {n: {} for n in names}
        for key, value in values.items():
            if key == LIST_KEY:
                continue
            name, suffix = _split_key(key, value, source)
            if name not in per_name:
                raise ConfigError(
                    "%s: key %r (value %r) configures resource %r, which is not "
                    "listed in %s=%s; add it there (e.g. %s=%s) or remove the key"
                    % (source, key, value, name, LIST_KEY, ";".join(names),
                       LIST_KEY, ";".join(list(names) + [name])))
            per_name[name][suffix] = value
        return cls(tuple(_spec(n, per_name[n], source) for n in names), explicit=explicit)

    @classmethod
    def load(cls, path: Optional[str] = None,
             overrides: Sequence[str] = ()) -> "ExternalResourceConfig":
        """Default, then the YAML file at ``path``, then ``key=value`` overrides."""
        if not path and not overrides:
            return cls.default()
        flat: dict[str, Any] = {}
        if path:
            flat.update(_read_yaml(path))
        for item in overrides:
            key, value = _split_override(item)
            flat[key] = value
        source = " + ".join(
            ([path] if path else []) + (["--external_resource"] if overrides else []))
        return cls.from_mapping(flat, source=source)

    @classmethod
    def from_options(cls, options: Any) -> "ExternalResourceConfig":
        """From ``PipelineOptions``: GpuRunnerOptions' two config flags, or
        ``--fake_gpus=N`` (N testing-driver GPUs; not with the other two)."""
        from beam_gpu_runner.options import GpuRunnerOptions
        opts = options.view_as(GpuRunnerOptions)
        return cls.with_fake_gpus(opts.fake_gpus, opts.external_resources_config,
                                  opts.external_resource or ())

    @classmethod
    def with_fake_gpus(cls, fake_gpus: Optional[int], path: Optional[str] = None,
                       overrides: Sequence[str] = ()) -> "ExternalResourceConfig":
        """``load(path, overrides)``, or ``fake_gpus`` testing-driver GPUs when
        that is set (said in the log); both at once is a ConfigError."""
        if not fake_gpus:
            return cls.load(path, overrides)
        if path or overrides:
            given = ([("--external_resources_config=%s" % path)] if path else []) + [
                "--external_resource=%s" % o for o in overrides]
            raise ConfigError(
                "--fake_gpus=%d and %s were both given: --fake_gpus replaces the "
                "external resource config with %d testing-driver GPUs; drop it to use "
                "the config, or drop the config (or fake devices in it: %s)"
                % (fake_gpus, " ".join(given), fake_gpus, " ".join(fake_gpu_keys(fake_gpus))))
        _LOG.info("--fake_gpus=%d: %d fake GPU(s) from the testing driver (no GPU is used; "
                  "hinted stages compute on the CPU)", fake_gpus, fake_gpus)
        return cls.load(None, fake_gpu_keys(fake_gpus))

    def to_flat(self) -> dict[str, str]:
        """The flat Flink keys equivalent to this config."""
        out = {LIST_KEY: ";".join(self.names)}
        for spec in self.resources:
            out[spec.key("driver-factory.class")] = spec.driver_factory
            if spec.amount is not None:
                out[spec.key("amount")] = str(spec.amount)
            for k, v in spec.param_items:
                out[spec.key("param." + k)] = v
            if spec.kubernetes_config_key:
                out[spec.key("kubernetes.config-key")] = spec.kubernetes_config_key
            if spec.yarn_config_key:
                out[spec.key("yarn.config-key")] = spec.yarn_config_key
        return out


def load_config(path: Optional[str] = None,
                overrides: Sequence[str] = ()) -> ExternalResourceConfig:
    """``ExternalResourceConfig.load``: default, YAML file, then key=value overrides."""
    return ExternalResourceConfig.load(path, overrides)


def _parse_names(raw: Any, source: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, (list, tuple)):
        parts = [str(p).strip() for p in raw]
    elif isinstance(raw, str):
        parts = [p.strip() for p in raw.split(";")]
    else:
        raise ConfigError(
            "%s: %s=%r is not a ';'-separated list of names; write e.g. %s: gpu"
            % (source, LIST_KEY, raw, LIST_KEY))
    names = [p for p in parts if p]
    if names in (["none"], ["None"]):
        return ()
    seen: set[str] = set()
    for name in names:
        if not _NAME_RE.match(name):
            raise ConfigError(
                "%s: %s=%r has the name %r; names may use only letters, digits, "
                "'-' and '_' (e.g. %s: gpu)" % (source, LIST_KEY, raw, name, LIST_KEY))
        if name in seen:
            raise ConfigError("%s: %s=%r lists %r twice; list each resource once"
                              % (source, LIST_KEY, raw, name))
        seen.add(name)
    return tuple(names)


def _split_key(key: str, value: Any, source: str) -> tuple[str, str]:
    shapes = ("%s; or %s<name>.{amount, driver-factory.class, param.<key>, "
              "kubernetes.config-key, yarn.config-key}" % (LIST_KEY, PREFIX))
    if not key.startswith(PREFIX):
        raise ConfigError("%s: unknown key %r (value %r); expected %s"
                          % (source, key, value, shapes))
    name, _, suffix = key[len(PREFIX):].partition(".")
    ok = bool(_NAME_RE.match(name)) and (
        suffix in _SIMPLE_SUFFIXES
        or (suffix.startswith("param.") and len(suffix) > len("param.")))
    if not ok:
        raise ConfigError("%s: unknown key shape %r (value %r); expected %s"
                          % (source, key, value, shapes))
    return name, suffix


def _scalar(value: Any, key: str, source: str) -> str:
    if isinstance(value, (dict, list, tuple)) or value is None:
        raise ConfigError("%s: %s=%r must be a single value, e.g. %s: VALUE"
                          % (source, key, value, key))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_amount(value: Any, key: str, source: str) -> int:
    fix = "use a whole number >= 1, e.g. %s=1 (or drop the key to use all discovered)" % key
    if isinstance(value, bool):
        raise ConfigError("%s: %s=%r is not a whole number; %s" % (source, key, value, fix))
    try:
        amount = int(str(value).strip())
    except ValueError:
        raise ConfigError("%s: %s=%r is not a whole number; %s"
                          % (source, key, value, fix)) from None
    if amount < 1:
        raise ConfigError("%s: %s=%r must be >= 1; %s" % (source, key, value, fix))
    return amount


def _spec(name: str, keys: Mapping[str, Any], source: str) -> ResourceSpec:
    prefix = PREFIX + name + "."
    driver = keys.get("driver-factory.class")
    if driver is None:
        if name != DEFAULT_RESOURCE:
            raise ConfigError(
                "%s: resource %r has no %sdriver-factory.class; set it to an entry "
                "point name (gpu, testing) or module:Class"
                % (source, name, prefix))
        driver = DEFAULT_DRIVER
    driver_text = _scalar(driver, prefix + "driver-factory.class", source).strip()
    if not driver_text:
        raise ConfigError("%s: %sdriver-factory.class is empty; set it to an entry "
                          "point name (gpu, testing) or module:Class" % (source, prefix))
    amount = keys.get("amount")
    params = tuple(sorted(
        (suffix[len("param."):], _scalar(v, prefix + suffix, source))
        for suffix, v in keys.items() if suffix.startswith("param.")))
    k8s = keys.get("kubernetes.config-key")
    yarn = keys.get("yarn.config-key")
    return ResourceSpec(
        name=name,
        driver_factory=driver_text,
        amount=None if amount is None else _parse_amount(amount, prefix + "amount", source),
        param_items=params,
        kubernetes_config_key=None if k8s is None else _scalar(
            k8s, prefix + "kubernetes.config-key", source),
        yarn_config_key=None if yarn is None else _scalar(
            yarn, prefix + "yarn.config-key", source))


def _flatten(doc: Mapping[Any, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in doc.items():
        full = "%s%s" % (prefix, key)
        if isinstance(value, Mapping):
            yield from _flatten(value, full + ".")
        else:
            yield full, value


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            doc = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError("reading external resource config %r (--external_resources_config)"
                          " failed: %s; check the path" % (path, exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError("external resource config %r is not valid YAML: %s"
                          % (path, exc)) from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(
            "external resource config %r must be a YAML mapping of Flink keys "
            "(e.g. 'external-resources: gpu'), got %s" % (path, type(doc).__name__))
    return dict(_flatten(doc))


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            "--external_resource %r is not KEY=VALUE; write e.g. "
            "--external_resource external-resource.gpu.amount=2" % item)
    return key.strip(), value.strip()
