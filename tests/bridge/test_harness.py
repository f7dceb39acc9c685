"""Our worker entry point: Beam's harness with ~1 MB output messages (bridge/harness.py)."""
from __future__ import annotations

from apache_beam.runners.worker import data_plane

from beam_gpu_runner.bridge import harness
from beam_gpu_runner.placement import harness as entry_point
from beam_gpu_runner.placement import local


def _stream(sent: list[bytes]) -> data_plane.ClosableOutputStream:
    return data_plane.ClosableOutputStream.create(
        close_callback=sent.append, flush_callback=sent.append, data_buffer_time_limit_ms=0)


def test_output_is_flushed_at_the_installed_size_between_elements(monkeypatch):
    monkeypatch.setattr(data_plane, "SizeBasedBufferingClosableOutputStream",
                        data_plane.SizeBasedBufferingClosableOutputStream)
    harness.install_flush_size(1000)
    harness.install_flush_size(1000)   # twice: still one subclass deep
    assert data_plane.SizeBasedBufferingClosableOutputStream.__mro__[2] is (
        data_plane.ClosableOutputStream)
    sent: list[bytes] = []
    out = _stream(sent)
    out.write(b"a" * 600)
    out.maybe_flush()
    assert sent == []              # below the size: kept
    out.write(b"b" * 600)          # a whole element is never cut
    out.maybe_flush()
    assert sent == [b"a" * 600 + b"b" * 600]
    out.write(b"c")
    out.close()
    assert sent[-1] == b"c"


def test_beams_default_is_ten_megabytes_without_it():
    sent: list[bytes] = []
    out = _stream(sent)
    out.write(b"a" * (2 << 20))
    out.maybe_flush()
    assert sent == []


def test_local_workers_run_our_entry_point():
    assert local.harness_command()[-2:] == ["-m", "beam_gpu_runner.placement.harness"]
    assert harness.OUTPUT_MESSAGE_BYTES == 1 << 20


def test_the_harness_still_runs_when_the_flush_size_cannot_be_set(monkeypatch, caplog):
    from apache_beam.runners.worker import sdk_worker_main

    ran: list[list[str]] = []
    monkeypatch.delattr(data_plane, "SizeBasedBufferingClosableOutputStream")
    monkeypatch.setattr(sdk_worker_main, "main", ran.append)
    entry_point.main(["harness"])
    assert ran == [["harness"]]
    assert "keeping Beam's output flush size" in caplog.text


def test_worker_logging_reaches_stderr_only_as_errors_before_beams_handler(monkeypatch):
    import io
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))   # restored after
    out, err = io.TextIOWrapper(io.BytesIO()), io.StringIO()
    entry_point._setup_output(out, err)
    assert out.line_buffering
    log = logging.getLogger("beam_gpu_runner.test_harness")
    log.warning("an import-time warning")   # the root has a handler: no basicConfig
    log.error("early error")

    class FnApiLogRecordHandler(logging.Handler):   # Beam's, by name
        def emit(self, record: logging.LogRecord) -> None:
            pass

    root.addHandler(FnApiLogRecordHandler())
    log.error("relayed over the Fn API only")
    assert err.getvalue() == "ERROR beam_gpu_runner.test_harness: early error\n"


def test_a_reusable_worker_serves_one_job_per_environment_line(monkeypatch):
    import io
    import json
    import os

    environ = {"WORKER_ID": "w1", "OLD_ONLY": "x"}
    ran: list[dict[str, str]] = []
    lines = b"".join(json.dumps({"env": env}).encode() + b"\n" for env in (
        {"WORKER_ID": "w2", "JOB": "2"}, {"WORKER_ID": "w3", "JOB": "3"}))
    status_read, status_write = os.pipe()
    try:
        entry_point.serve_jobs(lambda: ran.append(dict(environ)), io.BytesIO(lines),
                               status_write, environ)
        said = os.read(status_read, 100)
    finally:
        os.close(status_read)
        os.close(status_write)
    # the first job's environment, then each line's, replacing (not merging)
    assert ran == [{"WORKER_ID": "w1", "OLD_ONLY": "x"},
                   {"WORKER_ID": "w2", "JOB": "2"}, {"WORKER_ID": "w3", "JOB": "3"}]
    assert said == entry_point.IDLE * 3   # after each job; then stdin ended


def test_beams_closed_log_handler_is_dropped_between_jobs(monkeypatch):
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))   # restored after

    class FnApiLogRecordHandler(logging.Handler):   # Beam's, by name
        def emit(self, record: logging.LogRecord) -> None:
            pass

    other = logging.NullHandler()
    root.addHandler(FnApiLogRecordHandler())
    root.addHandler(other)
    entry_point.drop_fn_api_log_handlers()
    assert other in root.handlers
    assert not [h for h in root.handlers if type(h).__name__ == "FnApiLogRecordHandler"]


def test_the_harness_names_the_current_jobs_worker_in_its_log_stream(monkeypatch):
    from apache_beam.runners.worker import sdk_worker_main, worker_id_interceptor

    monkeypatch.setattr(sdk_worker_main, "main", lambda argv: None)
    monkeypatch.setattr(worker_id_interceptor.WorkerIdInterceptor, "_worker_id", "old")
    monkeypatch.setenv("WORKER_ID", "worker_7")
    harness.run_harness(["harness"])
    assert worker_id_interceptor.WorkerIdInterceptor()._worker_id == "worker_7"
