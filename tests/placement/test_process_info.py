"""Exit descriptions and log tails, shared by the local and Ray placements."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from beam_gpu_runner.placement.local import LocalProcess
from beam_gpu_runner.placement.process_info import describe_returncode, read_log_tail


@pytest.mark.slow   # starts a process
def test_local_process_reports_signal_exit_and_log_tail(tmp_path):
    log_path = tmp_path / "w.log"
    log = open(log_path, "ab")
    popen = subprocess.Popen(
        [sys.executable, "-c", "import time; print('\\n'.join(map(str, range(30))),"
         " flush=True); time.sleep(60)"], stdout=log, stderr=subprocess.STDOUT)
    process = LocalProcess("w", popen, str(log_path), log)
    assert process.exit_description() == "running (pid %d)" % popen.pid
    deadline = time.monotonic() + 30
    while read_log_tail(str(log_path), 1) != "29\n":
        assert time.monotonic() < deadline, "the child never wrote its log"
        time.sleep(0.05)
    popen.send_signal(signal.SIGKILL)
    popen.wait()
    assert process.exit_description() == "killed by signal 9 (SIGKILL) (pid %d)" % popen.pid
    assert process.log_tail(3) == "27\n28\n29\n"
    process.stop()


def test_descriptions_and_missing_logs():
    assert describe_returncode(3) == "exit code 3"
    assert describe_returncode(-15) == "killed by signal 15 (SIGTERM)"
    assert read_log_tail(None) == "" and read_log_tail("/nonexistent/log") == ""


# -- forwarding a worker's output (OutputPump) ----------------------------------

def _pump(tmp_path, console="stdout", prefix=b"", write=None):
    import os as _os
    from beam_gpu_runner.placement.process_info import LogFile, OutputPump, write_console
    read_fd, write_fd = _os.pipe()
    log = LogFile(str(tmp_path / "w.log"))
    pump = OutputPump("w", _os.fdopen(read_fd, "rb"), log, console,
                      prefix=lambda: prefix, write=write or write_console)
    return pump, _os.fdopen(write_fd, "wb"), log


def test_pump_forwards_whole_lines_to_the_console_and_the_log(tmp_path, capsys):
    pump, pipe, log = _pump(tmp_path)
    pipe.write(b"first li")
    pipe.flush()
    pipe.write(b"ne\nsecond line\nno newline at the end")
    pipe.close()
    assert pump.join(30)
    log.close()
    expected = "first line\nsecond line\nno newline at the end\n"
    assert capsys.readouterr().out == expected
    assert (tmp_path / "w.log").read_text() == expected


def test_pump_prefixes_each_line(tmp_path, capsys):
    pump, pipe, log = _pump(tmp_path, console="stderr", prefix=b"(worker_3) ")
    pipe.write(b"a\nb\n\nc")
    pipe.close()
    assert pump.join(30)
    assert capsys.readouterr().err == "(worker_3) a\n(worker_3) b\n(worker_3) \n(worker_3) c\n"
    assert (tmp_path / "w.log").read_text() == "a\nb\n\nc\n"   # the log stays raw


def test_pump_keeps_draining_and_logging_when_the_console_fails(tmp_path):
    calls = []

    def broken(name, block):
        calls.append(block)
        raise BrokenPipeError("the reader went away")

    pump, pipe, log = _pump(tmp_path, write=broken)
    pipe.write(b"one\n")
    pipe.flush()
    deadline = time.monotonic() + 30
    while not calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pipe.write(b"two\n" * 50000)    # more than a pipe holds: it must be read
    pipe.close()
    assert pump.join(30)
    assert len(calls) == 1           # the console was dropped after it failed
    assert (tmp_path / "w.log").read_text() == "one\n" + "two\n" * 50000


def test_a_line_without_end_is_cut_at_the_limit(tmp_path, capsys, monkeypatch):
    from beam_gpu_runner.placement import process_info
    monkeypatch.setattr(process_info, "MAX_LINE_BYTES", 10)
    pump, pipe, log = _pump(tmp_path)
    pipe.write(b"x" * 25)
    pipe.close()
    assert pump.join(30)
    assert all(len(line) <= 25 for line in capsys.readouterr().out.splitlines())
    assert (tmp_path / "w.log").read_text().replace("\n", "") == "x" * 25


def test_prefix_lines():
    from beam_gpu_runner.placement.process_info import prefix_lines
    assert prefix_lines(b"a\nb\n", b"> ") == b"> a\n> b\n"
    assert prefix_lines(b"a\n", b"") == b"a\n"
    assert prefix_lines(b"", b"> ") == b""
