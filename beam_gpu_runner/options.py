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
            "--max_bundle_attempts", type=_positive_int, default=3,
            help="Attempts per bundle when a worker process dies mid-bundle.")
        group.add_argument(
            "--lease_dir", default=None,
            help="Folder for the host-wide GPU lease file "
                 "(default: $BEAM_GPU_RUNNER_LEASE_DIR or the temp folder).")


def num_workers(options: PipelineOptions) -> int:
    """Workers per pool: ``--num_workers`` if given, else the CPU count."""
    value = options.view_as(WorkerOptions).num_workers
    if value is not None and value < 1:
        raise ValueError("--num_workers must be >= 1, got %r" % value)
    return value or os.cpu_count() or 1
