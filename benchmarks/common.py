"""What every benchmark shares: runners, options, progress, timing helpers."""
from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

_LOG = logging.getLogger(__name__)

GPU_RUNNER = "beam_gpu_runner.GpuRunner"
#: Beam 2.77's DirectRunner first tries to download and start Prism; offline
#: that fails and it falls back to the FnApiRunner engine. We name that engine
#: directly so every run measures the same thing without a failed download.
BASELINE_RUNNER = "FnApiRunner"
BASELINE_NOTE = ("Beam DirectRunner = FnApiRunner named explicitly (DirectRunner in Beam "
                 "2.77 first tries to download Prism, which fails offline, then falls back "
                 "to FnApiRunner)")

RUNNERS = {"gpu": GPU_RUNNER, "direct": BASELINE_RUNNER}

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_importable_by_workers() -> None:
    """GpuRunner's worker processes unpickle functions of this package.

    The repository root goes last on PYTHONPATH so that a ``beam_gpu_runner``
    already on the path (e.g. a snapshot under test) keeps precedence.
    """
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _REPO_ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + [_REPO_ROOT])
    if _REPO_ROOT not in sys.path:
        sys.path.append(_REPO_ROOT)


def cold_start() -> None:
    """End the idle workers earlier jobs of this process left for reuse, so
    that the next job starts its own. Steady rates are slopes between a small
    and a big job, which assume both pay the same start-up: with the small
    job's workers reused by the big one, the big one skipped it and the slope
    came out inflated (trivial 0.92 M elements/s in a first run, 0.41-0.55 M
    in the next; MNIST "119% of the raw classifier")."""
    from beam_gpu_runner.placement.warm import WARM
    WARM.retire_all()


_FAKE_GPU: list[str] | None = None


def fake_gpu_args() -> list[str]:
    """One testing GPU when the host has none (as the MNIST demo does), leased
    in a private folder: the host-wide lease file is shared with every other
    job on the host, including other checkouts of this runner, whose lease
    format may differ (a full run failed on it once)."""
    global _FAKE_GPU
    if _FAKE_GPU is None:
        from beam_gpu_runner.pipelines.mnist_streaming import StreamingConfig, with_fake_gpu_if_none
        from beam_gpu_runner.testing import private_lease_dir
        _FAKE_GPU = with_fake_gpu_if_none(StreamingConfig(), [])
        if _FAKE_GPU:
            _FAKE_GPU.append("--lease_dir=%s" % private_lease_dir())
    return list(_FAKE_GPU)


def options(runner: str, num_workers: int = 0, extra: Sequence[str] = ()) -> PipelineOptions:
    """Options for ``runner``; on GpuRunner ``--num_workers`` when given and,
    on a host without GPUs, as many fake ones as workers (at least one): the
    issue's "two fake GPUs, one per core" for two workers."""
    args = ["--runner=%s" % RUNNERS.get(runner, runner)]
    if runner == "gpu":
        if num_workers:
            args.append("--num_workers=%d" % num_workers)
        args += [a.replace("--fake_gpus=1", "--fake_gpus=%d" % max(1, num_workers))
                 for a in fake_gpu_args()]
    args += list(extra)
    return PipelineOptions(args)


def fake_gpu_options(runner: str, devices: int, num_workers: int = 0,
                     extra: Sequence[str] = ()) -> PipelineOptions:
    """Options for ``runner``; on GpuRunner with ``devices`` testing GPUs named
    like an H100 (matching ``accelerator="type:nvidia-h100;..."`` hints) in a
    private lease folder, and ``--num_workers`` when given."""
    args = ["--runner=%s" % RUNNERS.get(runner, runner)]
    if runner == "gpu":
        from beam_gpu_runner.testing import gpu_test_args
        if devices:
            args = gpu_test_args(num_devices=devices)
        if num_workers:
            args.append("--num_workers=%d" % num_workers)
    return PipelineOptions(args + list(extra))


def median_run(runs: Sequence[Any], field: str) -> Any:
    """The run whose ``field`` is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: getattr(r, field))
    return ordered[(len(ordered) - 1) // 2]


@dataclass(frozen=True)
class Machine:
    cores: int
    python: str
    beam: str
    jax: str
    platform: str

    @classmethod
    def here(cls) -> "Machine":
        import apache_beam
        import jax
        return cls(cores=os.cpu_count() or 1, python=platform.python_version(),
                   beam=apache_beam.__version__, jax=jax.__version__,
                   platform=platform.platform())


class Progress:
    """One line per step on stderr, with the time since the harness started."""

    def __init__(self, quiet: bool = False) -> None:
        self._t0 = time.monotonic()
        self._quiet = quiet

    def __call__(self, fmt: str, *args: object) -> None:
        if not self._quiet:
            print("[%6.1fs] %s" % (time.monotonic() - self._t0, fmt % args),
                  file=sys.stderr, flush=True)


def code_version() -> dict[str, str]:
    """The commit measured, and which ``beam_gpu_runner`` was imported."""
    import subprocess

    import beam_gpu_runner
    try:
        commit = subprocess.run(["git", "-C", _REPO_ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"commit": commit, "beam_gpu_runner": os.path.dirname(beam_gpu_runner.__file__)}


def median_of(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    samples = [fn() for _ in range(repeats)]
    return statistics.median(samples), samples


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def steady_rate(what: str, count: int, wall_s: float, small_count: int,
                small_wall_s: float) -> float:
    """Items/s between a small and a big run, ``(count - small) / (wall - small_wall)``,
    so what both runs pay once cancels out; ``count / wall_s`` without a small
    run (``small_count`` 0) or when the big run was not slower."""
    if small_count and wall_s > small_wall_s:
        return (count - small_count) / (wall_s - small_wall_s)
    if small_count:
        _LOG.warning("%s: the big run was not slower than the small one; "
                     "reporting count / wall time", what)
    return count / wall_s
