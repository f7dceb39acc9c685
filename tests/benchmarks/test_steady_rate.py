"""The steady rate both throughput benchmarks report (benchmarks/common.py)."""
from __future__ import annotations

import logging

from benchmarks.common import steady_rate


def test_fixed_costs_cancel_between_the_small_and_the_big_run():
    # 1 s of start-up in both runs, 100 items/s after it
    assert steady_rate("t", 1000, 11.0, 100, 2.0) == 100.0


def test_without_a_small_run_it_is_count_over_wall_time():
    assert steady_rate("t", 1000, 4.0, 0, 0.0) == 250.0


def test_a_big_run_no_slower_than_the_small_one_falls_back_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        assert steady_rate("mnist gpu", 1000, 2.0, 100, 2.5) == 500.0
    assert "mnist gpu: the big run was not slower" in caplog.text
