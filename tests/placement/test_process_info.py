"""Exit descriptions and log tails, shared by the local and Ray placements."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from beam_gpu_runner.placement.local import LocalProcess
from beam_gpu_runner.placement.process_info import describe_returncode, read_log_tail


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
