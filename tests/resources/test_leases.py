"""Host-wide leases: real processes, disjointness, reclaiming, shares."""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
from pathlib import Path

import pytest

from beam_gpu_runner.drivers.testing import fake_uuid
from beam_gpu_runner.resources.leases import (
    LEASE_DIR_ENV,
    Candidate,
    Lease,
    LeaseError,
    LeaseTable,
    default_lease_dir,
    holder_alive,
    process_start_time,
)
from lease_children import hold_one_gpu

SPAWN = multiprocessing.get_context("spawn")
DEVICES = [Candidate("GPU-%d" % i, "gpu", str(i), "fake") for i in range(4)]


def raw_leases(lease_dir: Path) -> list[dict[str, object]]:
    path = lease_dir / "beam-gpu-runner-leases.json"
    if not path.exists():
        return []
    leases: list[dict[str, object]] = json.loads(path.read_text())["leases"]
    return leases


def test_eight_processes_four_devices_are_disjoint(tmp_path: Path) -> None:
    results = SPAWN.Queue()
    done = SPAWN.Event()
    procs = [SPAWN.Process(target=hold_one_gpu,
                           args=(str(tmp_path), 4, "worker-%d" % n, results, done))
             for n in range(8)]
    for proc in procs:
        proc.start()
    try:
        got = [results.get(timeout=120) for _ in procs]
        ok = [r for r in got if r[1] == "ok"]
        short = [r for r in got if r[1] == "short"]
        assert len(ok) == 4 and len(short) == 4
        assert sorted(r[2] for r in ok) == ["0", "1", "2", "3"]     # distinct indexes
        for _, _, message, _ in short:
            assert "stage 'Classify'" in message
            assert "type:nvidia-h100;count:1" in message
            assert "0 are free and 4 are leased" in message
            assert "external-resource.gpu.param.num-devices" in message
        holders = {lease["pid"] for lease in raw_leases(tmp_path)}
        assert holders == {r[3] for r in ok}
    finally:
        done.set()
        for proc in procs:
            proc.join(60)
    assert all(proc.exitcode == 0 for proc in procs)
    assert raw_leases(tmp_path) == []   # clean exits released everything


def test_killed_holder_is_reclaimed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = SPAWN.Queue()
    done = SPAWN.Event()
    child = SPAWN.Process(target=hold_one_gpu,
                          args=(str(tmp_path), 1, "victim", results, done))
    child.start()
    try:
        assert results.get(timeout=120)[1] == "ok"
        table = LeaseTable(str(tmp_path))
        leased_key = raw_leases(tmp_path)[0]["device_key"]
        assert leased_key == fake_uuid(0)
        assert not table.acquire([Candidate(fake_uuid(0))], 1).ok   # the child holds it
        child.kill()
        child.join(60)
        assert len(raw_leases(tmp_path)) == 1          # no atexit after SIGKILL
        caplog.set_level("INFO")
        outcome = table.acquire([Candidate(fake_uuid(0), "gpu", "0")], 1)
        assert outcome.ok
        assert "reclaiming lease" in caplog.text
        assert [lease["pid"] for lease in raw_leases(tmp_path)] == [os.getpid()]
        table.close()
    finally:
        # Never set() an Event a killed process waited on: set() would wait for
        # the dead sleeper to wake up.
        if child.is_alive():
            child.kill()
        child.join(60)


def test_clean_exit_releases(tmp_path: Path) -> None:
    results = SPAWN.Queue()
    child = SPAWN.Process(target=hold_one_gpu,
                          args=(str(tmp_path), 1, "short-lived", results, None))
    child.start()
    assert results.get(timeout=120)[1] == "ok"
    child.join(60)
    assert child.exitcode == 0
    assert raw_leases(tmp_path) == []


def test_whole_devices_never_shared(tmp_path: Path) -> None:
    a, b = LeaseTable(str(tmp_path)), LeaseTable(str(tmp_path))
    first = a.acquire(DEVICES, 3, holder="a")
    assert first.ok and [lease.device_key for lease in first.leases] == [
        "GPU-0", "GPU-1", "GPU-2"]
    assert not b.acquire(DEVICES, 2).ok                 # all or nothing
    second = b.acquire(DEVICES, 1)
    assert [lease.device_key for lease in second.leases] == ["GPU-3"]
    a.release(lease.lease_id for lease in first.leases)
    assert len(b.acquire(DEVICES, 3).leases) == 3
    b.close()
    a.close()
    assert LeaseTable(str(tmp_path)).snapshot() == []


def test_fractional_shares_sum_to_at_most_one(tmp_path: Path) -> None:
    table = LeaseTable(str(tmp_path))
    two = DEVICES[:2]
    halves = [table.acquire(two, 1, 0.5) for _ in range(4)]
    assert all(h.ok for h in halves)
    keys = [h.leases[0].device_key for h in halves]
    assert keys == ["GPU-0", "GPU-0", "GPU-1", "GPU-1"]   # best fit packs
    assert not table.acquire(two, 1, 0.5).ok
    assert not table.acquire(two, 1, 1.0).ok
    table.release([halves[0].leases[0].lease_id])
    third = table.acquire(two, 1, 0.3)
    assert third.ok and third.leases[0].device_key == "GPU-0"
    assert not table.acquire(two, 1, 0.3).ok             # 0.5 + 0.3 + 0.3 > 1
    usage = dict(table.acquire(two, 1, 0.9).usage)
    assert usage == pytest.approx({"GPU-0": 0.8, "GPU-1": 1.0})
    table.close()


def test_thirds_fit_exactly(tmp_path: Path) -> None:
    table = LeaseTable(str(tmp_path))
    assert all(table.acquire(DEVICES[:1], 1, 1 / 3).ok for _ in range(3))
    assert not table.acquire(DEVICES[:1], 1, 0.01).ok
    table.close()


def test_pid_reuse_is_detected(tmp_path: Path) -> None:
    start = process_start_time(os.getpid())
    assert start is not None
    assert holder_alive(os.getpid(), start)
    assert not holder_alive(os.getpid(), start - 100.0)   # same pid, other process
    stale = Lease("old", "GPU-0", 1.0, os.getpid(), start - 100.0, "old job", "gpu", "0")
    (tmp_path / "beam-gpu-runner-leases.json").write_text(
        json.dumps({"version": 1, "leases": [stale.to_json()]}))
    table = LeaseTable(str(tmp_path))
    assert table.snapshot() == []
    assert table.acquire(DEVICES[:1], 1).ok
    table.close()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "beam-gpu-runner-leases.json").write_text("{not json")
    with pytest.raises(LeaseError, match="not the JSON.*delete it"):
        LeaseTable(str(tmp_path)).snapshot()


def test_bad_arguments(tmp_path: Path) -> None:
    table = LeaseTable(str(tmp_path))
    with pytest.raises(ValueError, match="share"):
        table.acquire(DEVICES, 1, 1.5)
    with pytest.raises(ValueError, match="count"):
        table.acquire(DEVICES, 0)


def test_lease_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(LEASE_DIR_ENV, str(tmp_path / "env"))
    assert default_lease_dir("/opt/x") == "/opt/x"
    assert default_lease_dir(None) == str(tmp_path / "env")
    monkeypatch.delenv(LEASE_DIR_ENV)
    import tempfile
    assert default_lease_dir(None) == tempfile.gettempdir()


def test_lease_error_pickles() -> None:
    err = LeaseError("lease file x is not the JSON beam-gpu-runner writes")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_leases_record_their_job_and_files_with_unknown_keys_still_read(
        tmp_path: Path) -> None:
    table = LeaseTable(str(tmp_path))
    outcome = table.acquire(DEVICES, 1, holder="Classify/worker-1", job="job-42")
    assert outcome.leases[0].job == "job-42"
    (stored,) = raw_leases(tmp_path)
    assert stored["job"] == "job-42" and stored["holder"] == "Classify/worker-1"
    # a lease written by a newer version with a key this one does not know
    path = tmp_path / "beam-gpu-runner-leases.json"
    doc = json.loads(path.read_text())
    doc["leases"][0]["future_key"] = 1
    path.write_text(json.dumps(doc))
    (lease,) = table.snapshot()
    assert lease.job == "job-42"
    # and one written before leases had a job
    del doc["leases"][0]["job"]
    path.write_text(json.dumps(doc))
    assert table.snapshot()[0].job == ""
    table.close()
