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
                "mnist_latency", "trivial", "startup", "scaling", "targets",
                "device_bound", "cpu_bound", "streaming", "fast_edge", "gbk_memory",
                "spill_table", "suite"):
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
    for mode in ("cold-gpu", "cold-direct", "next-gpu", "next-direct", "warm-jobserver",
                 "warm-jobserver-lean-client"):
        assert out["startup"][mode]["median_s"] > 0
    # issue 17: the same selection of Beam's FnApiRunnerTest passed on both runners
    suite = out["suite"]
    assert suite["gpu"]["passed"] == suite["direct"]["passed"] > 0
    assert suite["ratio_vs_direct"] > 0
    assert out["raw_limit"]["images_per_s"] > 0
    sizes = out["sizes"]
    # issue 14: every element ran once, on a device of the stage's pool
    for n in sizes["device_counts"]:
        r = out["device_bound"]["gpu_%d" % n]
        assert r["spread"]["elements"] == sizes["device_elements"]
        assert 1 <= r["spread"]["devices_used"] <= n
        assert 0 < r["efficiency"] <= 1.05
    assert out["device_bound"]["direct"]["spread"]["devices_used"] == 0
    cpu = out["cpu_bound"]
    assert cpu["iterations"] > 0 and cpu["ratio_2_vs_1"] > 0
    for label in ("gpu_w1", "gpu_w2", "direct"):
        assert cpu["runs"][label]["spread"]["elements"] == sizes["cpu_elements"]
    stream = out["streaming"]
    assert stream["elements"] >= sizes["streaming_elements"]
    assert stream["state"].endswith("DRAINED")
    assert stream["spread"]["devices_used"] >= 1
    # issue 15
    edge = out["fast_edge"]
    for label in ("gpu", "direct", "direct_fused"):
        assert edge[label]["steady_mb_per_s"] > 0
    assert edge["gpu"]["chaining"] == sizes["edge_chaining"]
    assert edge["memcpy"]["mb_per_s"] > 0 and edge["share_of_memcpy"] > 0
    for runner in ("gpu", "direct"):
        g = out["gbk_memory"][runner]
        assert g["shuffled_bytes"] == sizes["gbk_values"] * sizes["gbk_value_bytes"]
        assert g["driver_peak_rss_bytes"] > 0 and g["wall_s"] > 0
    cases = out["spill_table"]["cases"]
    assert {(c["shape"], c["table"]) for c in cases} == {
        (shape, table) for shape in ("small-values", "large-values")
        for table in ("dict", "table-in-memory", "table-spilling")}
    assert all(c["runs"] > 0 for c in cases if c["table"] == "table-spilling")
    assert set(out["targets"]) == set(run.TARGETS)
    assert all(isinstance(t["met"], bool) for t in out["targets"].values())
    assert all(x >= 0 for x in _numbers(out))
