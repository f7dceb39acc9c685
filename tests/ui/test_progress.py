"""The terminal progress line (ui/progress.py)."""
from __future__ import annotations

import io
import time

from beam_gpu_runner.status import WATERMARK_DONE, JobStatus, StageStatus
from beam_gpu_runner.ui.progress import ProgressLine, progress_text, show_progress

from .fakes import streaming_job


class TerminalStream(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def batch_job(done: int, total: int = 7, elements: int = 12345) -> JobStatus:
    stages = tuple(
        StageStatus("s%d" % i, "Stage%d" % i, elements_in=elements if i == 0 else 0,
                    output_watermark=WATERMARK_DONE if i < done else None,
                    bundles_running=2 if i == done else 0)
        for i in range(total))
    return JobStatus("j", "j", "RUNNING", start_time=100.0, stages=stages)


def test_the_line_says_stages_done_elements_and_what_runs() -> None:
    text = progress_text(batch_job(3), now=104.25)
    assert text == ("stages 3/7 done | 12,345 elements in | running: Stage3 (2 bundles) "
                    "| 4.2 s")


def test_retries_and_many_running_stages() -> None:
    text = progress_text(streaming_job(tick=1), now=1_700_000_001.0)
    assert "stages 0/3 done" in text
    assert "running: PeriodicImpulse/GenSequence, <img src=x onerror=alert(1)>" in text
    assert "1 retried" in text


def test_nothing_is_drawn_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = show_progress(lambda: batch_job(1), stream)
    progress.stop()
    assert stream.getvalue() == ""


def test_draws_in_place_cuts_to_the_width_and_clears_at_the_end() -> None:
    stream = TerminalStream()
    line = ProgressLine(lambda: batch_job(3), stream)
    line._width = lambda: 30  # type: ignore[method-assign]
    line.draw()
    line.draw()
    written = stream.getvalue()
    assert written.count("\r\x1b[K") == 2
    drawn = written.split("\r\x1b[K")[-1]
    assert len(drawn) == 30 and drawn.endswith("…")
    line.stop()
    assert stream.getvalue().endswith("\r\x1b[K")
    before = stream.getvalue()
    line.draw()                       # after stop: nothing more
    assert stream.getvalue() == before


def test_show_progress_redraws_on_a_terminal_until_stopped() -> None:
    stream = TerminalStream()
    calls = []

    def status() -> JobStatus:
        calls.append(1)
        return batch_job(min(len(calls), 7))
    progress = show_progress(status, stream, interval_s=0.01)
    deadline = time.monotonic() + 60
    while len(calls) < 3:
        assert time.monotonic() < deadline, "the line was never redrawn"
        time.sleep(0.01)
    progress.stop()
    text = stream.getvalue()
    assert "stages " in text and text.endswith("\r\x1b[K")


def test_a_failing_status_is_skipped() -> None:
    stream = TerminalStream()

    def broken() -> JobStatus:
        raise RuntimeError("job torn down")
    line = ProgressLine(broken, stream)
    line.draw()
    line.stop()
    assert stream.getvalue() == ""
