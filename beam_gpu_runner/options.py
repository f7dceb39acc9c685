"""Pipeline options for GpuRunner (a Beam PipelineOptions subclass)."""
from __future__ import annotations

import argparse
import os

from apache_beam.options.pipeline_options import PipelineOptions


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected a whole number >= 1, got %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got %r" % text)
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds > 0, got %r" % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("expected seconds > 0, got %r" % text)
    return value


class GpuRunnerOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("GpuRunner")
        group.add_argument(
            "--num_workers", type=_positive_int, default=None,
            help="Worker processes per pool (default: CPU count, %d here)."
            % (os.cpu_count() or 1))
        group.add_argument(
            "--external_resources_config", default=None,
            help="YAML file with Flink-style external-resource keys.")
        group.add_argument(
            "--external_resource", action="append", default=None,
            help="One Flink-style key=value, e.g. "
                 "external-resource.gpu.amount=2 (repeatable).")
        group.add_argument(
            "--placement", default="local", choices=("local", "ray"),
            help="Where worker processes run: local subprocesses or Ray actors.")
        group.add_argument(
            "--ray_address", default=None,
            help="Ray cluster address for --placement=ray (auto, HOST:PORT).")
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
