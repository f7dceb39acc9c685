"""Beam's SDK harness with a smaller output flush size (run inside workers).

Beam's harness sends a bundle's output when 10 MB have accumulated or the
bundle ends, so a runner sees nothing of a big bundle until late. Sent in
~1 MB messages, output reaches the runner while the bundle runs, and the
runner can start on it (a GroupByKey's input is grouped as it arrives,
``bridge.grouped``). The harness flushes only between elements (Beam calls
``maybe_flush`` after each one), so a message still holds whole elements.

This is the one place where our workers differ from Beam's plain harness
(DESIGN.md asks for it unchanged; BUILD_NOTES.md records why this setting is
changed). Everything else, and the processing of every element, is Beam's.
Should a Beam version lack the class this rebinds, the harness runs unchanged
(with Beam's 10 MB messages) after a warning. Imports stay lazy: workers
import this module first thing.
"""
from __future__ import annotations

import logging
import os
from typing import Any

_LOG = logging.getLogger(__name__)

#: Output is sent to the runner in Data messages of about this size.
OUTPUT_MESSAGE_BYTES = 1 << 20


def install_flush_size(size: int) -> None:
    from apache_beam.runners.worker import data_plane

    base = data_plane.SizeBasedBufferingClosableOutputStream
    if getattr(base, "_beam_gpu_runner_flush_size", None) == size:
        return

    class _Sized(base):  # type: ignore[valid-type, misc]
        _beam_gpu_runner_flush_size = size

        def __init__(self, close_callback: Any = None, flush_callback: Any = None,
                     size_flush_threshold: int = size, **kwargs: Any) -> None:
            super().__init__(close_callback, flush_callback, size_flush_threshold, **kwargs)

    # ClosableOutputStream.create looks the class up by name when called.
    setattr(data_plane, "SizeBasedBufferingClosableOutputStream", _Sized)


def run_harness(argv: list[str]) -> None:
    """Beam's ``sdk_worker_main.main`` with ~1 MB output messages, for the
    job whose variables are in ``os.environ`` (a reused worker runs it once
    per job, ``placement/harness.py``)."""
    from apache_beam.runners.worker import sdk_worker_main, worker_id_interceptor

    # Beam's log handler names its worker by a class attribute read from
    # WORKER_ID when Beam is imported: the previous job's id in a reused worker.
    worker_id_interceptor.WorkerIdInterceptor._worker_id = os.environ.get("WORKER_ID")

    try:
        install_flush_size(OUTPUT_MESSAGE_BYTES)
    except (AttributeError, TypeError) as exc:   # a Beam without that class
        _LOG.warning("beam_gpu_runner harness: keeping Beam's output flush size "
                     "(could not set %d bytes: %s)", OUTPUT_MESSAGE_BYTES, exc)
    sdk_worker_main.main(argv)
