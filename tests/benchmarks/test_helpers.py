"""Pure helpers of the issue 14/15 benchmarks: what the records say, the
variants' option parsing, the section plan. No timing."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import devices, run, variants  # noqa: E402


def _record(element: int, device: str, worker: str, start: float, end: float
            ) -> dict[str, Any]:
    return {"element": element, "device": device, "worker": worker, "start": start,
            "end": end}


def test_spread_counts_devices_workers_and_the_span():
    records = [_record(0, "GPU-a", "w0", 10.0, 10.5), _record(1, "GPU-b", "w1", 10.0, 10.5),
               _record(2, "GPU-a", "w0", 10.5, 11.0), _record(3, "", "w2", 10.2, 10.4)]
    spread = devices.Spread.of(records, started=8.0)
    assert spread.elements == 4
    assert spread.devices_used == 2 and spread.per_device == {"GPU-a": 2, "GPU-b": 1}
    assert spread.workers_used == 3
    assert spread.busy_s == pytest.approx(1.7)
    assert spread.span_s == pytest.approx(1.0)
    assert spread.first_start_s == pytest.approx(2.0)


def test_efficiency_is_one_when_spread_perfectly_and_one_over_n_when_serial():
    perfect = [_record(i, "GPU-%d" % (i % 2), "w", 0.0 + (i // 2), 1.0 + (i // 2))
               for i in range(8)]
    assert devices.efficiency(devices.Spread.of(perfect, 0.0), 2) == pytest.approx(1.0)
    serial = [_record(i, "GPU-0", "w", float(i), float(i + 1)) for i in range(8)]
    assert devices.efficiency(devices.Spread.of(serial, 0.0), 4) == pytest.approx(0.25)
    assert devices.efficiency(devices.Spread.of([], 0.0), 4) == 0.0


def test_spin_is_deterministic_and_calibration_positive():
    assert devices.spin(1000) == devices.spin(1000)
    assert devices.calibrate_spin(0.001, trials=1) >= 1


def test_records_written_by_the_sink_are_read_back(tmp_path):
    sink = devices.JsonLinesSink(str(tmp_path))
    sink.start_bundle()
    sink.process({"element": 1, "device": "GPU-a"})
    sink.process({"element": 2, "device": ""})
    sink.finish_bundle()
    sink.start_bundle()
    sink.finish_bundle()   # an empty bundle writes nothing
    assert sorted(r["element"] for r in devices.read_records(str(tmp_path))) == [1, 2]
    assert len(list(tmp_path.iterdir())) == 1


def test_variants_are_parsed_by_name():
    assert variants.parse_variants(["off=--accelerator_chaining=off", "base=",
                                    "both=--a=1 --b=2"]) == {
        "off": ["--accelerator_chaining=off"], "base": [], "both": ["--a=1", "--b=2"]}
    with pytest.raises(ValueError, match="NAME=OPTIONS"):
        variants.parse_variants(["--accelerator_chaining=off"])
    with pytest.raises(ValueError, match="given twice"):
        variants.parse_variants(["a=", "a=--x"])


def test_sections_are_checked_and_numbered_in_run_order():
    step = run.Steps(["mnist", "fast_edge"])
    assert step("mnist") == "1/2" and step("fast_edge") == "2/2"
    with pytest.raises(ValueError, match="unknown section"):
        run.run_all(run.MODES["smoke"], lambda *a: None, sections=["nope"])


def test_targets_are_judged_only_for_sections_that_ran():
    out = {"gbk_memory": {"gpu": {"driver_peak_rss_bytes": 2_000_000_000}},
           "cpu_bound": {"ratio_2_vs_1": 1.9}}
    targets = run.evaluate(out)
    assert set(targets) == {"gbk_driver_peak_gb", "cpu_2_vs_1_workers"}
    assert targets["gbk_driver_peak_gb"]["met"] is False
    assert targets["gbk_driver_peak_gb"]["better"] == "lower"
    assert targets["cpu_2_vs_1_workers"]["met"] is True
