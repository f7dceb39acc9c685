"""SIGTERM as KeyboardInterrupt for entry points (beam_gpu_runner/interrupts.py)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from beam_gpu_runner import interrupts


def test_sigterm_raises_terminated_inside_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(interrupts.Terminated) as info:
        with interrupts.sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)   # interrupted at once by the handler
    assert isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before


def test_exit_codes_and_signals():
    assert interrupts.exit_code(KeyboardInterrupt()) == 130
    assert interrupts.exit_code(interrupts.Terminated()) == 143
    assert interrupts.signal_of(interrupts.Terminated()) is signal.SIGTERM


def test_off_the_main_thread_it_changes_nothing():
    import threading
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def body():
        with interrupts.sigterm_interrupts():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before]
