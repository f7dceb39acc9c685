"""Jobs wait for devices other jobs lease, instead of failing (issue 14)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import beam_gpu_runner
from beam_gpu_runner.testing import gpu_test_args

pytestmark = pytest.mark.slow


class RecordDevices(beam.DoFn):
    """Writes which devices its worker holds, and when it ran."""

    def __init__(self, out: str, job: str) -> None:
        self._out = out
        self._job = job

    def process(self, element):
        gpus = beam_gpu_runner.runtime_context().gpus()
        start = time.time()
        time.sleep(0.5)   # hold the devices a while, so the jobs overlap
        record = {"job": self._job, "uuids": sorted(g.get_property("uuid") for g in gpus),
                  "start": start, "end": time.time()}
        with open("%s/%s-%s.json" % (self._out, self._job, element), "w") as f:
            json.dump(record, f)
        yield element


def test_three_jobs_needing_two_of_four_devices_all_finish_on_disjoint_devices(
        tmp_path: Path, no_leftover_workers) -> None:
    leases = tmp_path / "leases"
    leases.mkdir()
    args = gpu_test_args(num_devices=4, lease_dir=str(leases)) + [
        "--num_workers=1", "--device_wait_timeout=300"]
    errors: list[BaseException] = []

    def job(name: str) -> None:
        try:
            with beam.Pipeline(options=PipelineOptions(args + ["--job_name=%s" % name])) as p:
                (p | beam.Create([1, 2], reshuffle=False)
                 | beam.ParDo(RecordDevices(str(tmp_path), name)).with_resource_hints(
                     accelerator="type:nvidia-h100;count:2"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job, args=("job%d" % i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    records = [json.loads(p.read_text()) for p in tmp_path.glob("job*.json")]
    assert sorted({r["job"] for r in records}) == ["job0", "job1", "job2"]
    assert all(len(r["uuids"]) == 2 for r in records)
    for a in records:
        for b in records:
            if a["job"] != b["job"] and a["start"] < b["end"] and b["start"] < a["end"]:
                assert not set(a["uuids"]) & set(b["uuids"]), (a, b)
