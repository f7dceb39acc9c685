"""The devices page's data (ui/devices.py): drivers' devices, lease holders,
NVML sampling of real GPUs (through a fake reader)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pytest

from beam_gpu_runner.resources.api import ResourceInfo
from beam_gpu_runner.resources.assignment import DeviceAllocator
from beam_gpu_runner.resources.config import load_config
from beam_gpu_runner.resources.leases import Candidate, LeaseTable
from beam_gpu_runner.ui.devices import (
    LocalDevices, Reading, Sampler, holding_job, is_fake, split_holder)

from .fakes import streaming_job

FAKE_2 = ["external-resource.gpu.driver-factory.class=testing",
          "external-resource.gpu.param.num-devices=2"]


def fake_devices(lease_dir: Path) -> LocalDevices:
    return LocalDevices(load_config(None, FAKE_2), str(lease_dir), cache_s=0.0)


def lease(lease_dir: Path, index: int, holder: str, job: str = "",
          share: float = 1.0) -> LeaseTable:
    table = LeaseTable(str(lease_dir))
    uuid = "GPU-testing-0000-0000-0000-%012d" % index
    outcome = table.acquire([Candidate(uuid, "gpu", str(index), "NVIDIA H100 80GB HBM3")],
                            1, share, holder=holder, job=job)
    assert outcome.ok
    return table


def test_fake_devices_are_listed_free_and_marked_fake(tmp_path: Path) -> None:
    devices = fake_devices(tmp_path)
    rows = devices.statuses()
    assert [(d.index, d.uuid[:12], d.fake, d.holder_worker) for d in rows] == [
        ("0", "GPU-testing-", True, None), ("1", "GPU-testing-", True, None)]
    assert all(d.utilization_percent is None and d.samples == () for d in rows)
    devices.close()


def test_holders_come_from_the_lease_table(tmp_path: Path) -> None:
    table = lease(tmp_path, 1, "Classify/worker-2", job="job-9")
    devices = fake_devices(tmp_path)
    rows = {d.index: d for d in devices.statuses()}
    assert rows["1"].holder_job == "job-9"
    assert rows["1"].holder_stage == "Classify"
    assert rows["1"].holder_worker == "worker-2"
    assert rows["1"].share is None
    assert rows["0"].holder_worker is None
    table.close()
    assert all(d.holder_worker is None for d in devices.statuses())


def test_a_shared_device_has_a_row_per_holder(tmp_path: Path) -> None:
    a = lease(tmp_path, 0, "A/worker-1", job="j1", share=0.5)
    b = lease(tmp_path, 0, "B/worker-1", job="j2", share=0.5)
    rows = [d for d in fake_devices(tmp_path).statuses() if d.index == "0"]
    assert [(d.holder_job, d.holder_stage, d.share) for d in rows] == [
        ("j1", "A", 0.5), ("j2", "B", 0.5)]
    a.close()
    b.close()


def test_a_leased_device_the_drivers_do_not_report_is_listed_from_its_lease(
        tmp_path: Path) -> None:
    table = lease(tmp_path, 5, "S/worker-1", job="other")
    rows = fake_devices(tmp_path).statuses()
    assert [d.index for d in rows] == ["0", "1", "5"]
    assert rows[-1].holder_job == "other" and rows[-1].fake
    table.close()


def test_the_holding_job_is_inferred_from_running_jobs_when_the_lease_has_none(
        tmp_path: Path) -> None:
    table = lease(tmp_path, 0, "s2/worker-2")
    jobs = [streaming_job("done", state="DONE"), streaming_job("live")]
    (row,) = [d for d in fake_devices(tmp_path).statuses(jobs) if d.index == "0"]
    assert row.holder_job == "live"
    # two running jobs with such a worker: not guessed
    (row,) = [d for d in fake_devices(tmp_path).statuses(
        jobs + [streaming_job("live-2")]) if d.index == "0"]
    assert row.holder_job is None and row.holder_worker == "worker-2"
    table.close()


def test_split_holder_and_is_fake() -> None:
    assert split_holder("a/b/worker-1") == ("a/b", "worker-1")
    assert split_holder("worker-1") == (None, "worker-1")
    assert split_holder("") == (None, None)
    assert is_fake("GPU-testing-0000") and not is_fake("GPU-8c3b")


def test_holding_job_prefers_the_lease_field() -> None:
    from beam_gpu_runner.resources.leases import Lease
    lease_ = Lease("id", "GPU-x", 1.0, 1, 0.0, holder="s2/worker-2", job="explicit")
    assert holding_job(lease_, [streaming_job("live")]) == "explicit"


class TestingReader:
    """A fake NVML: readings rise by 10 % a call; ``fail`` makes it raise."""
    __test__ = False

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.closed = False
        self.fail = fail

    def read(self, uuids: Sequence[str]) -> dict[str, Reading]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("NVML is gone")
        return {u: Reading(float(self.calls), 10.0 * self.calls, 1000 * self.calls, 8000)
                for u in uuids if u != "GPU-unreadable"}

    def close(self) -> None:
        self.closed = True


class RealLookingDriver:
    """Two devices with real-looking UUIDs (so the sampler reads them)."""

    def all_resource_info(self) -> list[ResourceInfo]:
        return [ResourceInfo.of(index=0, uuid="GPU-real-0", name="NVIDIA A100",
                                **{"memory-total": 8000}),
                ResourceInfo.of(index=1, uuid="GPU-unreadable", name="NVIDIA A100")]

    def retrieve_resource_info(self, amount: int) -> set[ResourceInfo]:
        return set(self.all_resource_info()[:amount])


def wait_for(predicate, what: str, limit_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("never happened: " + what)
        time.sleep(0.02)


def test_real_gpus_are_sampled_in_the_background(tmp_path: Path) -> None:
    config = load_config(None, ["external-resource.gpu.driver-factory.class=gpu"])
    allocator = DeviceAllocator(config, str(tmp_path), drivers={"gpu": RealLookingDriver()})
    reader = TestingReader()
    devices = LocalDevices(config, str(tmp_path), allocator=allocator,
                           reader_factory=lambda: reader, sample_interval_s=0.01,
                           history_s=0.05, cache_s=0.0)
    devices.statuses()   # discovery starts the sampler
    wait_for(lambda: reader.calls >= 8, "8 samples")
    rows = {d.uuid: d for d in devices.statuses()}
    real = rows["GPU-real-0"]
    assert not real.fake
    assert real.utilization_percent is not None and real.utilization_percent >= 10.0
    assert real.memory_total_bytes == 8000
    assert 2 <= len(real.samples) <= 6          # history_s / interval_s + 1 kept
    times = [s[0] for s in real.samples]
    assert times == sorted(times)
    unreadable = rows["GPU-unreadable"]
    assert unreadable.utilization_percent is None and unreadable.samples == ()
    devices.close()
    assert reader.closed


def test_fake_devices_start_no_sampler(tmp_path: Path) -> None:
    made: list[TestingReader] = []

    def factory() -> TestingReader:
        made.append(TestingReader())
        return made[-1]
    devices = LocalDevices(load_config(None, FAKE_2), str(tmp_path),
                           reader_factory=factory)
    devices.statuses()
    devices.close()
    assert made == []


def test_a_failing_reader_stops_sampling_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    reader = TestingReader(fail=True)
    sampler = Sampler(reader, ["GPU-real-0"], interval_s=0.01)
    sampler.sample_once()
    sampler.sample_once()
    warnings = [r for r in caplog.records if "sampling stopped" in r.getMessage()]
    assert len(warnings) == 1
    assert sampler.history("GPU-real-0") == ()


def test_drivers_that_fail_leave_the_leased_devices(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture
                                                    ) -> None:
    table = lease(tmp_path, 0, "S/worker-1", job="j")
    bad = load_config(None, ["external-resource.gpu.driver-factory.class=no.such:Driver"])
    rows = LocalDevices(bad, str(tmp_path)).statuses()
    assert [(d.index, d.holder_job) for d in rows] == [("0", "j")]
    assert any("could not list devices" in r.getMessage() for r in caplog.records)
    table.close()
