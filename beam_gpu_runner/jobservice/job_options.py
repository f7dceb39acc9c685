"""Job options: from the Job API's Struct to PipelineOptions, merged with the
server's own flags, and the option list that DescribePipelineOptions returns.

Clients send options as ``beam:option:<name>:v1`` keys with JSON values (ints
as strings, BEAM-5509). GpuRunnerOptions values are converted back to their
types here. Server flags (``beam-gpu-runner job-server --external_resource ...``)
are the deployment's settings and are merged into every job:

* ``external_resource``: the server's keys first, then the job's, so a job may
  add keys or override one of the server's for itself;
* ``external_resources_config``: the job's file when it names one, else the
  server's;
* ``placement`` (and ``ray_address``): the server's when given; where workers
  run is the deployment's choice, not the client's;
* ``ui_port``, ``ui_host``, ``allow_from``, ``insecure``: dropped; the server
  serves one web UI for all its jobs (``job-server --ui_port``), and a client
  may not open ports or widen access on the server's host.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from apache_beam.options.pipeline_options import (
    PipelineOptions, StandardOptions, _BeamArgumentParser)
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.job import utils as job_utils
from google.protobuf import struct_pb2


def _gpu_runner_options() -> type[PipelineOptions]:
    # Imported on first use, like the runner: importing it registers the
    # GpuRunner flags with every PipelineOptions of the process.
    from beam_gpu_runner.options import GpuRunnerOptions
    return GpuRunnerOptions

_URN_PREFIX = "beam:option:"
_URN_SUFFIX = ":v1"

OptionType = beam_job_api_pb2.PipelineOptionType


@dataclass(frozen=True)
class ServerJobDefaults:
    """The job server's flags that go into every job's options."""

    external_resources_config: Optional[str] = None
    external_resources: tuple[str, ...] = field(default_factory=tuple)
    placement: Optional[str] = None
    ray_address: Optional[str] = None


class JobOptionsError(ValueError):
    """A job's options could not be read."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(key, value, reason)
        self.key = key
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        return "job option %s=%r: %s" % (self.key, self.value, self.reason)


def _option_name(urn: str) -> str:
    if urn.startswith(_URN_PREFIX) and urn.endswith(_URN_SUFFIX):
        return urn[len(_URN_PREFIX):-len(_URN_SUFFIX)]
    return urn


def _parser_for(options_class: type[PipelineOptions]) -> argparse.ArgumentParser:
    parser = _BeamArgumentParser(add_help=False)
    options_class._add_argparse_args(parser)
    return parser


def _gpu_option_types() -> dict[str, Callable[[str], Any]]:
    types = {}
    for action in _parser_for(_gpu_runner_options())._actions:
        if action.type is not None and callable(action.type):
            types[action.dest] = action.type
    return types


def _all_subclasses(cls: type[PipelineOptions]) -> list[type[PipelineOptions]]:
    found: list[type[PipelineOptions]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def _beam_numeric_option_types() -> dict[str, Callable[[str], Any]]:
    """int and float options of every registered PipelineOptions class
    (e.g. Beam's ``num_workers``), which clients send as strings."""
    parser = _BeamArgumentParser(add_help=False, conflict_handler="resolve")
    for options_class in _all_subclasses(PipelineOptions):
        try:
            options_class._add_argparse_args(parser)
        except (argparse.ArgumentError, TypeError, ValueError):
            continue   # a class that cannot join a shared parser: leave its options
    return {action.dest: action.type for action in parser._actions
            if action.type in (int, float)}


def options_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The Struct as ``{option name: value}``: GpuRunnerOptions typed, and
    Beam's int and float options turned back into numbers."""
    raw = job_utils.struct_to_dict(struct)
    values = {_option_name(k): v for k, v in raw.items()}
    for name, number in _beam_numeric_option_types().items():
        value = values.get(name)
        if not isinstance(value, str):
            continue
        try:
            values[name] = number(value)
        except ValueError as exc:
            raise JobOptionsError(name, value, str(exc)) from None
    for name, convert in _gpu_option_types().items():
        value = values.get(name)
        if value is None or isinstance(value, (list, dict)):
            continue
        text = str(int(value)) if isinstance(value, float) and value.is_integer() \
            else str(value)
        try:
            values[name] = convert(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise JobOptionsError(name, value, str(exc)) from None
    ext = values.get("external_resource")
    if isinstance(ext, str):
        values["external_resource"] = [ext]
    return values


#: GpuRunner options a job may not set on the server (see the module docstring).
SERVER_ONLY_OPTIONS = ("ui_port", "ui_host", "allow_from", "insecure")


def merge_server_defaults(values: dict[str, Any], defaults: ServerJobDefaults
                          ) -> dict[str, Any]:
    merged = {k: v for k, v in values.items() if k not in SERVER_ONLY_OPTIONS}
    job_keys = list(merged.get("external_resource") or [])
    if defaults.external_resources or job_keys:
        merged["external_resource"] = list(defaults.external_resources) + job_keys
    if not merged.get("external_resources_config") and defaults.external_resources_config:
        merged["external_resources_config"] = defaults.external_resources_config
    if defaults.placement:
        merged["placement"] = defaults.placement
    if defaults.ray_address:
        merged["ray_address"] = defaults.ray_address
    return merged


def job_pipeline_options(struct: struct_pb2.Struct,
                         defaults: ServerJobDefaults = ServerJobDefaults()
                         ) -> PipelineOptions:
    """The PipelineOptions an executor gets for a job: the client's, merged
    with the server's defaults, and nothing else. ``flags=[]``: without it
    Beam parses the server process's own ``sys.argv`` (``--port=8099``) into
    every job's options ("Discarding unparseable args" in each job)."""
    return PipelineOptions(flags=[], **merge_server_defaults(options_dict(struct), defaults))


def _descriptor(action: argparse.Action, group: str) -> beam_job_api_pb2.PipelineOptionDescriptor:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        kind = OptionType.BOOLEAN
    elif isinstance(action, argparse._AppendAction):
        kind = OptionType.ARRAY
    elif action.type is int or getattr(action.type, "__name__", "") in ("_positive_int",
                                                                          "_port"):
        kind = OptionType.INTEGER
    elif action.type is float or getattr(action.type, "__name__", "") == "_positive_float":
        kind = OptionType.NUMBER
    else:
        kind = OptionType.STRING
    default = action.default
    if isinstance(default, bool):
        default_text = "true" if default else "false"
    elif default is None or isinstance(default, list):
        default_text = ""
    else:
        default_text = str(default)
    return beam_job_api_pb2.PipelineOptionDescriptor(
        name=action.dest, type=kind,  # type: ignore[arg-type]
        description=action.help or "", default_value=default_text, group=group)


def described_options_classes() -> Sequence[type[PipelineOptions]]:
    return (_gpu_runner_options(), StandardOptions)


def describe_options() -> list[beam_job_api_pb2.PipelineOptionDescriptor]:
    """Descriptors of GpuRunnerOptions and Beam's StandardOptions."""
    described = []
    for options_class in described_options_classes():
        for action in _parser_for(options_class)._actions:
            if action.dest in ("help",) or not action.option_strings:
                continue
            described.append(_descriptor(action, options_class.__name__))
    return described
