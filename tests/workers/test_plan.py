"""Pool sizing decisions that need no pipeline: bundles per worker."""
from __future__ import annotations

from dataclasses import replace

from beam_gpu_runner.resources.requirements import NO_REQUIREMENTS
from beam_gpu_runner.workers.plan import DEFAULT_BUNDLES_PER_WORKER, bundles_per_worker


def test_the_stage_hint_wins_over_the_harness_threads_option():
    hinted = replace(NO_REQUIREMENTS, max_active_bundles_per_worker=5)
    assert bundles_per_worker(hinted, 3) == 5


def test_the_harness_threads_option_then_the_default():
    assert bundles_per_worker(NO_REQUIREMENTS, 3) == 3
    assert bundles_per_worker(NO_REQUIREMENTS, None) == DEFAULT_BUNDLES_PER_WORKER == 2
