"""LocalPlacement: worker processes on this host, their output, their folder."""
from __future__ import annotations

import logging
import os
import sys
import time

import pytest

from beam_gpu_runner.placement import local
from beam_gpu_runner.placement.api import WorkerLaunch
from beam_gpu_runner.resources.requirements import StageRequirements

#: Stands in for Beam's harness: says hello on both streams, then waits.
FAKE_HARNESS = (
    "import os, sys, time\n"
    "wid = os.environ['WORKER_ID']\n"
    "print('out of %s' % wid, flush=True)\n"
    "print('err of %s' % wid, file=sys.stderr, flush=True)\n"
    "time.sleep(float(os.environ.get('FAKE_SLEEP', '600')))\n"
)


@pytest.fixture
def fake_harness(monkeypatch):
    monkeypatch.setattr(local, "harness_command",
                        lambda: [sys.executable, "-c", FAKE_HARNESS])


def _launch(worker_id: str, **env: str) -> WorkerLaunch:
    return WorkerLaunch(worker_id=worker_id, control_address="localhost:1",
                        logging_address="localhost:2", pipeline_options_json="{}",
                        requirements=StageRequirements(), env=env)


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.02)


def _log_has(process, text: str) -> bool:
    return text in open(process.log_path).read()


def test_one_workers_output_reaches_the_driver_unprefixed(fake_harness, capsys):
    placement = local.LocalPlacement()
    try:
        worker = placement.start_worker(_launch("w1"))
        _wait_for(lambda: _log_has(worker, "err of w1"), "the worker's output")
        worker.stop()
        captured = capsys.readouterr()
        assert captured.out == "out of w1\n"
        assert captured.err == "err of w1\n"
        assert "out of w1\n" in open(worker.log_path).read()
    finally:
        placement.close()


def test_with_two_workers_stderr_lines_name_their_worker(fake_harness, capsys):
    placement = local.LocalPlacement()
    try:
        first = placement.start_worker(_launch("w1", FAKE_SLEEP="0"))
        assert first.wait(30) == 0
        first.stop()   # drains its output
        second = placement.start_worker(_launch("w2"))
        _wait_for(lambda: _log_has(second, "err of w2"), "the second worker's output")
        second.stop()
        captured = capsys.readouterr()
        assert captured.err.splitlines() == ["err of w1", "(w2) err of w2"]
        # stdout is the pipelines' data: as the workers wrote it
        assert captured.out.splitlines() == ["out of w1", "out of w2"]
    finally:
        placement.close()


def test_workers_run_in_their_own_session(fake_harness):
    placement = local.LocalPlacement()
    try:
        worker = placement.start_worker(_launch("w1"))
        assert os.getsid(worker.pid) == worker.pid != os.getsid(0)
        worker.stop()
        assert worker.exit_description().startswith("killed by signal 15")
    finally:
        placement.close()


def test_close_removes_the_folder_unless_logs_are_kept(fake_harness, caplog):
    dropped = local.LocalPlacement()
    dropped.start_worker(_launch("w1")).stop()
    dropped.close()
    assert not os.path.exists(dropped.log_dir)

    kept = local.LocalPlacement()
    worker = kept.start_worker(_launch("w1"))
    _wait_for(lambda: _log_has(worker, "out of w1"), "the worker's output")
    worker.stop()
    with caplog.at_level(logging.WARNING, logger=local.__name__):
        assert kept.keep_logs() == kept.log_dir
        kept.keep_logs()   # said once
    kept.close()
    try:
        assert [r.getMessage() for r in caplog.records] == [
            "Worker logs kept in %s" % kept.log_dir]
        assert "err of w1" in open(os.path.join(kept.log_dir, "w1.log")).read()
    finally:
        import shutil
        shutil.rmtree(kept.log_dir, ignore_errors=True)


def test_at_exit_open_placements_kill_their_workers_and_remove_their_folder(fake_harness):
    placement = local.LocalPlacement()
    worker = placement.start_worker(_launch("w1"))
    local._close_open_placements()
    assert not worker.is_alive()
    assert not os.path.exists(placement.log_dir)
    placement.close()   # closing again is harmless


def test_log_tail_of_a_dead_worker_has_its_last_words(fake_harness):
    placement = local.LocalPlacement()
    try:
        worker = placement.start_worker(_launch("w1", FAKE_SLEEP="0"))
        _wait_for(lambda: not worker.is_alive(), "the worker's end")
        assert "err of w1" in worker.log_tail()
        worker.stop()
    finally:
        placement.close()


def test_stop_ends_what_the_worker_started(monkeypatch):
    import psutil
    spawner = ("import subprocess, sys, time\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
               "print(child.pid, flush=True)\n"
               "time.sleep(600)\n")
    monkeypatch.setattr(local, "harness_command", lambda: [sys.executable, "-c", spawner])
    placement = local.LocalPlacement()
    try:
        worker = placement.start_worker(_launch("w1"))
        _wait_for(lambda: open(worker.log_path).read().strip(), "the child's pid")
        child = psutil.Process(int(open(worker.log_path).read().split()[0]))
        worker.stop()
        child.wait(30)   # raises TimeoutExpired if the child outlived the stop
    finally:
        placement.close()


def test_only_variables_read_at_interpreter_start_decide_whether_a_worker_is_reused():
    command = ["python", "-m", "harness"]
    base = {"PYTHONPATH": "/a", "CONTROL_API_SERVICE_DESCRIPTOR": "url: 'x:1'",
            "WORKER_ID": "w1", "MY_SETTING": "1"}
    same = dict(base, CONTROL_API_SERVICE_DESCRIPTOR="url: 'x:2'", WORKER_ID="w2",
                MY_SETTING="2")
    assert local.reuse_key(command, base) == local.reuse_key(command, same)
    for changed in ({"PYTHONPATH": "/b"}, {"LD_PRELOAD": "x.so"},
                    {"CUDA_VISIBLE_DEVICES": "1"}, {"MALLOC_ARENA_MAX": "2"}):
        assert local.reuse_key(command, base) != local.reuse_key(command,
                                                                 dict(base, **changed))
    assert local.reuse_key(command, base) != local.reuse_key(["other"], base)


def test_a_reused_worker_gets_the_next_jobs_whole_environment():
    import json

    line = local.job_env_line({"WORKER_ID": "w2", "MY_SETTING": "2"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"env": {"WORKER_ID": "w2", "MY_SETTING": "2"}}
