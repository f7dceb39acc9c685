"""The benchmark harness in its minimal mode: runs, writes JSON with positive figures.

No timed assertions: only that every benchmark ran and reported something.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# benchmarks/ lives at the repository root, next to tests/ (not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import run  # noqa: E402

pytestmark = pytest.mark.slow


def _numbers(tree: object) -> list[float]:
    if isinstance(tree, bool):
        return []
    if isinstance(tree, (int, float)):
        return [float(tree)]
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return []


def test_smoke_run_writes_expected_json(tmp_path: Path) -> None:
    assert run.main(["--smoke", "--quiet", "--results_dir", str(tmp_path)]) == 0
    [path] = tmp_path.glob("*-smoke.json")
    assert list(tmp_path.glob("*-smoke.png"))
    out = json.loads(path.read_text())
    for key in ("date", "machine", "baseline", "raw_limit", "mnist_throughput",
                "mnist_latency", "trivial", "startup", "scaling", "targets"):
        assert key in out, key
    assert out["machine"]["cores"] == os.cpu_count()
    stream = out["mnist_throughput"]
    for label in ("direct", "gpu_w2"):
        assert stream[label]["steady_images_per_s"] > 0
        assert stream[label]["accuracy"] > 0.9
    assert stream["ratio_vs_direct"] > 0 and stream["share_of_raw"] > 0
    for runner in ("direct", "gpu"):
        lat = out["mnist_latency"][runner]
        assert 0 < lat["latency_p50_ms"] <= lat["latency_p99_ms"]
        assert out["trivial"][runner]["elements_per_s"] > 0
        assert out["trivial"][runner]["steady_elements_per_s"] > 0
    for mode in ("cold-gpu", "cold-direct", "warm-jobserver", "warm-jobserver-lean-client"):
        assert out["startup"][mode]["median_s"] > 0
    assert out["raw_limit"]["images_per_s"] > 0
    assert set(out["targets"]) == set(run.TARGETS)
    assert all(isinstance(t["met"], bool) for t in out["targets"].values())
    assert all(x >= 0 for x in _numbers(out))
