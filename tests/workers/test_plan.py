"""Pool sizing decisions that need no pipeline: bundles per worker."""
from __future__ import annotations

from dataclasses import replace

from beam_gpu_runner.resources.requirements import NO_REQUIREMENTS
from beam_gpu_runner.workers.plan import (
    DEFAULT_BUNDLES_PER_GPU_WORKER, DEFAULT_BUNDLES_PER_WORKER, bundles_per_worker)


def test_the_stage_hint_wins_over_the_harness_threads_option():
    hinted = replace(NO_REQUIREMENTS, max_active_bundles_per_worker=5)
    assert bundles_per_worker(hinted, 3) == 5


def test_the_harness_threads_option_then_the_default():
    assert bundles_per_worker(NO_REQUIREMENTS, 3) == 3
    assert bundles_per_worker(NO_REQUIREMENTS, None) == DEFAULT_BUNDLES_PER_WORKER == 2


def test_gpu_workers_run_one_bundle_unless_told():
    gpu = replace(NO_REQUIREMENTS, gpu_count=1.0)
    assert gpu.needs_gpu
    assert bundles_per_worker(gpu, None) == DEFAULT_BUNDLES_PER_GPU_WORKER == 1
    assert bundles_per_worker(gpu, 3) == 3
    assert bundles_per_worker(replace(gpu, max_active_bundles_per_worker=2), None) == 2
