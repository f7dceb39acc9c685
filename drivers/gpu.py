"""The GPU driver: NVML discovery, or a discovery script with Flink's contract.

Params (``external-resource.gpu.param.*``):

``discovery-script.path``
    When set, run ``<script> <amount> <args>``; it prints one line of
    comma-separated GPU indexes, and a non-zero exit is an error (Flink's
    contract). Relative paths are tried against the working directory, then
    against the bundled ``scripts/`` folder (``gpu-discovery.sh`` ships there).
    Without it, GPUs come from NVML (pynvml).
``discovery-script.args``
    Extra arguments, split like a shell would (e.g.
    ``--enable-coordination-mode --coordination-file /var/tmp/gpus``).
``discovery-script.timeout``
    Seconds the script may run (default 10).

Each GPU carries ``index`` (NVML index = PCI bus order), ``uuid``, ``name`` and
``memory-total``; MIG instances carry their ``MIG-...`` UUID, ``mig-index`` and
``parent-index`` (their ``index`` is the parent GPU's).
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Mapping, Optional

from beam_gpu_runner.drivers.nvml import Nvml, NvmlDevice, PynvmlNvml, discover
from beam_gpu_runner.resources.api import (
    DiscoveryError,
    ExternalResourceInfo,
    ResourceInfo,
)
from beam_gpu_runner.resources.config import ConfigError

_LOG = logging.getLogger(__name__)

SCRIPT_PATH = "discovery-script.path"
SCRIPT_ARGS = "discovery-script.args"
SCRIPT_TIMEOUT = "discovery-script.timeout"
DEFAULT_TIMEOUT_S = 10.0
SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
BUNDLED_SCRIPT = SCRIPTS_DIR / "gpu-discovery.sh"
_KEY = "external-resource.gpu.param."


def _resolve_script(raw: str) -> Path:
    path = Path(os.path.expanduser(raw))
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, SCRIPTS_DIR / path]
    for candidate in candidates:
        if candidate.exists():
            if not candidate.is_file():
                raise DiscoveryError(
                    "GPU discovery script %s (%s%s=%s) is not a file"
                    % (candidate, _KEY, SCRIPT_PATH, raw))
            if not os.access(candidate, os.X_OK):
                raise DiscoveryError(
                    "GPU discovery script %s (%s%s=%s) is not executable; "
                    "run: chmod +x %s" % (candidate, _KEY, SCRIPT_PATH, raw, candidate))
            return candidate
    raise DiscoveryError(
        "GPU discovery script %s (%s%s) does not exist (looked in: %s); fix the path "
        "or use the bundled %s" % (raw, _KEY, SCRIPT_PATH,
                                   ", ".join(str(c) for c in candidates), BUNDLED_SCRIPT))


def _parse_timeout(raw: Optional[str]) -> float:
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError("%s%s=%r must be seconds > 0, e.g. %s%s=10"
                          % (_KEY, SCRIPT_TIMEOUT, raw, _KEY, SCRIPT_TIMEOUT))
    return value


class GpuDriver:
    """ExternalResourceDriver for NVIDIA GPUs."""

    def __init__(self, params: Mapping[str, str], nvml: Optional[Nvml] = None) -> None:
        self._nvml: Nvml = nvml if nvml is not None else PynvmlNvml()
        raw = params.get(SCRIPT_PATH)
        self.script: Optional[Path] = _resolve_script(raw) if raw else None
        self.script_args = shlex.split(params.get(SCRIPT_ARGS, ""))
        self.timeout_s = _parse_timeout(params.get(SCRIPT_TIMEOUT))
        unknown = set(params) - {SCRIPT_PATH, SCRIPT_ARGS, SCRIPT_TIMEOUT}
        if unknown:
            _LOG.warning("GPU driver: ignoring unknown params %s (known: %s, %s, %s)",
                         sorted(unknown), SCRIPT_PATH, SCRIPT_ARGS, SCRIPT_TIMEOUT)

    def __repr__(self) -> str:
        return "GpuDriver(script=%s)" % (self.script or "none: NVML")

    def all_resource_info(self) -> list[ExternalResourceInfo]:
        """Every GPU on the host (may be empty), in index order."""
        devices = discover(self._nvml)
        if self.script is None:
            return [ResourceInfo.from_mapping(d.properties()) for d in devices]
        if not devices:
            raise DiscoveryError(
                "GPU discovery with script %s needs an amount: NVML cannot count the "
                "GPUs here; set external-resource.gpu.amount" % self.script)
        return sorted(self._run_script(len(devices), devices), key=_index)

    def retrieve_resource_info(self, amount: int) -> set[ExternalResourceInfo]:
        if amount < 1:
            raise DiscoveryError(
                "GPU discovery: amount must be >= 1, got %r "
                "(external-resource.gpu.amount)" % amount)
        if self.script is not None:
            return set(self._run_script(amount, discover(self._nvml)))
        devices = discover(self._nvml)
        if len(devices) < amount:
            raise DiscoveryError(
                "GPU discovery: asked for %d GPU(s) (external-resource.gpu.amount) but "
                "NVML found %d%s; lower external-resource.gpu.amount or drop it to use "
                "all discovered" % (amount, len(devices), _names(devices)))
        return {ResourceInfo.from_mapping(d.properties()) for d in devices[:amount]}

    def _run_script(self, amount: int, devices: list[NvmlDevice]) -> list[ResourceInfo]:
        assert self.script is not None
        argv = [str(self.script), str(amount), *self.script_args]
        stdout, stderr, code = _run(argv, self.timeout_s)
        shown = "stdout=%r stderr=%r" % (stdout.strip()[-2000:], stderr.strip()[-2000:])
        if code is None:
            raise DiscoveryError(
                "GPU discovery script %s timed out after %gs (%s%s); %s"
                % (" ".join(argv), self.timeout_s, _KEY, SCRIPT_TIMEOUT, shown))
        if code != 0:
            raise DiscoveryError("GPU discovery script %s exited with code %d; %s"
                                 % (" ".join(argv), code, shown))
        lines = [line for line in stdout.splitlines() if line.strip()]
        if len(lines) > 1:
            _LOG.warning("GPU discovery script %s printed %d lines; Flink's contract is "
                         "one line, using the last: %r", self.script, len(lines), lines[-1])
        indexes: list[int] = []
        for token in (lines[-1].split(",") if lines else []):
            token = token.strip()
            if not token:
                continue
            if not token.isdigit():
                raise DiscoveryError(
                    "GPU discovery script %s printed %r, which is not comma-separated "
                    "GPU indexes (bad entry %r); %s" % (" ".join(argv), lines[-1], token,
                                                       shown))
            if int(token) in indexes:
                raise DiscoveryError("GPU discovery script %s printed index %s twice "
                                     "(%r)" % (" ".join(argv), token, lines[-1]))
            indexes.append(int(token))
        if len(indexes) < amount:
            raise DiscoveryError(
                "GPU discovery script %s found %d GPU(s) %s but %d were asked for "
                "(external-resource.gpu.amount); %s"
                % (" ".join(argv), len(indexes), indexes, amount, shown))
        if len(indexes) > amount:
            _LOG.warning("GPU discovery script %s printed %d indexes for amount %d; "
                         "using the first %d", self.script, len(indexes), amount, amount)
        by_index = {d.index: d for d in devices if not d.is_mig}
        return [ResourceInfo.from_mapping(by_index[i].properties()) if i in by_index
                else ResourceInfo.of(index=i) for i in indexes[:amount]]


def _run(argv: list[str], timeout_s: float) -> tuple[str, str, Optional[int]]:
    """Run ``argv``; (stdout, stderr, exit code or None on timeout).

    The script gets its own process group, killed whole on timeout, so that a
    child it started cannot keep the pipes (and us) waiting.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return out, err, proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        return out, err, None


def _index(info: ExternalResourceInfo) -> int:
    return int(info.get_property("index") or 0)


def _names(devices: list[NvmlDevice]) -> str:
    return ": %s" % ", ".join("%d=%s" % (d.index, d.name) for d in devices) if devices else ""


class GpuDriverFactory:
    """Entry point ``gpu``; Flink's GPUDriverFactory counterpart."""

    def __init__(self, nvml: Optional[Nvml] = None) -> None:
        self._nvml = nvml

    def create_driver(self, params: Mapping[str, str]) -> GpuDriver:
        return GpuDriver(params, nvml=self._nvml)
