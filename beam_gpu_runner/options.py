"""Pipeline options for GpuRunner (a Beam PipelineOptions subclass)."""
from __future__ import annotations

import argparse
import json
import os

from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected a whole number >= 1, got %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got %r" % text)
    return value


def _fake_gpu_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            "expected how many fake GPUs, a whole number >= 1 (e.g. --fake_gpus=2), "
            "got %r" % text)
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds > 0, got %r" % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("expected seconds > 0, got %r" % text)
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected a port number 0-65535 (0: any free port), got %r" % text) from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            "expected a port number 0-65535 (0: any free port), got %r" % text)
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds >= 0, got %r" % text) from None
    if value < 0:
        raise argparse.ArgumentTypeError("expected seconds >= 0, got %r" % text)
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

#: Bytes of grouped data a job's driver holds before spilling. Grouped data
#: is only part of what a shuffle costs the driver: a large group also lives
#: in several transient copies on its way to a worker (Fn API messages), so
#: a 1 GB GroupByKey of 105 MB groups peaked at 1.1 GB with this budget
#: (1.7-1.8 GB with 512 MiB before spills gave freed memory back; BUILD_NOTES.md).
DEFAULT_SHUFFLE_MEMORY_BUDGET = 256 << 20

#: Seconds an idle local worker waits for the next job (Flink's
#: resourcemanager.taskmanager-timeout is 30 s too).
DEFAULT_WORKER_KEEP_ALIVE_S = 30.0


def _byte_count(text: str) -> int:
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _UNITS else ""
    try:
        value = int(float(raw[:len(raw) - len(unit)]) * _UNITS[unit])
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            "expected a number of bytes >= 1, e.g. 536870912 or 512M, got %r" % text)
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected a JSON object, got %r: %s"
                                         % (text, exc)) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, got %r" % text)
    return value


class GpuRunnerOptions(PipelineOptions):
    """GpuRunner's own flags.

    The worker count is Beam's standard ``--num_workers`` (WorkerOptions);
    GpuRunner reads it through :func:`num_workers` (default: CPU count).
    """

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("GpuRunner")
        group.add_argument(
            "--external_resources_config", default=None,
            help="YAML file with Flink-style external-resource keys.")
        group.add_argument(
            "--external_resource", action="append", default=None,
            help="One Flink-style key=value, e.g. "
                 "external-resource.gpu.amount=2 (repeatable).")
        group.add_argument(
            "--fake_gpus", type=_fake_gpu_count, default=None, metavar="N",
            help="Fake N GPUs with the testing driver (no GPU needed; stages "
                 "compute on the CPU). Replaces the external resource config: "
                 "do not combine with --external_resource(s_config).")
        group.add_argument(
            "--placement", default="local", choices=("local", "ray"),
            help="Where worker processes run: local subprocesses or Ray actors.")
        group.add_argument(
            "--ray_address", default=None,
            help="Ray cluster address for --placement=ray (auto, HOST:PORT).")
        group.add_argument(
            "--ray_runtime_env", type=_json_object, default=None,
            help="Ray runtime_env for --placement=ray workers, as JSON, e.g. "
                 "'{\"py_modules\": [\"my_pkg\"]}' (code not installed on the nodes).")
        group.add_argument(
            "--worker_start_timeout", type=_positive_float, default=60.0,
            help="Seconds a worker may take to connect before the job fails.")
        group.add_argument(
            "--worker_keep_alive", type=_seconds, default=DEFAULT_WORKER_KEEP_ALIVE_S,
            help="Seconds a local worker without GPUs stays idle after its job ended "
                 "cleanly, for the next job of this process to reuse (no interpreter "
                 "start, Beam already imported), as Flink's session cluster keeps idle "
                 "TaskManagers (default 30; 0: workers end with their job).")
        group.add_argument(
            "--max_bundle_attempts", type=_positive_int, default=3,
            help="Attempts per bundle when a worker process dies mid-bundle.")
        group.add_argument(
            "--lease_dir", default=None,
            help="Folder for the host-wide GPU lease file "
                 "(default: $BEAM_GPU_RUNNER_LEASE_DIR or the temp folder).")
        group.add_argument(
            "--ui_port", type=_port, default=None,
            help="Serve the web UI of this run (job, stages, devices, /metrics) on "
                 "this port while it runs; 0 picks a free one (the URL is logged). "
                 "Default: no UI.")
        group.add_argument(
            "--ui_host", default="127.0.0.1",
            help="Address the web UI binds (default 127.0.0.1, loopback only). "
                 "Beyond loopback it needs --allow_from or --insecure.")
        group.add_argument(
            "--allow_from", action="append", default=None, metavar="CIDR[,CIDR]",
            help="Client networks the web UI accepts, e.g. 10.0.0.0/8 (repeatable; "
                 "others get 403). Needed when --ui_host is beyond loopback.")
        group.add_argument(
            "--insecure", action="store_true", default=False,
            help="Let a web UI bound beyond loopback accept any client (logged as a "
                 "warning); prefer --allow_from.")
        group.add_argument(
            "--device_wait_timeout", type=_seconds, default=300.0,
            help="Seconds a worker waits for GPUs that other jobs lease before its job "
                 "fails, as Flink waits for slots (default 300; 0: fail at once). "
                 "Requests this host can never meet fail at once.")
        group.add_argument(
            "--shuffle_memory_budget", type=_byte_count, default=DEFAULT_SHUFFLE_MEMORY_BUDGET,
            help="Bytes of grouped (GroupByKey) data the driver holds in memory for a "
                 "job, all shuffles together (default 268435456, 256 MiB; suffixes K, M, "
                 "G accepted); beyond it, grouped data spills to local disk "
                 "(--spill_dir) and is read back in order.")
        group.add_argument(
            "--spill_dir", default=None,
            help="Folder for grouped data beyond --shuffle_memory_budget (default: "
                 "the temp folder); removed when the job ends.")
        group.add_argument(
            "--accelerator_chaining", default="on", choices=("on", "off"),
            help="on (default): unhinted transforms next to an accelerator stage run "
                 "in it, on its workers, as Flink chains operators (no bytes cross "
                 "processes); off: hinted transforms run apart from their neighbours, "
                 "Dataflow-style, for CPU-heavy neighbours.")


def num_workers(options: PipelineOptions) -> int:
    """Workers per pool: ``--num_workers`` if given, else the CPU count."""
    value = options.view_as(WorkerOptions).num_workers
    if value is not None and value < 1:
        raise ValueError("--num_workers must be >= 1, got %r" % value)
    return value or os.cpu_count() or 1
