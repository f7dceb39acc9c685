"""Bundle input is streamed without holding up the ProcessBundle request."""
from __future__ import annotations

import threading

from apache_beam.runners.worker.data_plane import SizeBasedBufferingClosableOutputStream

from beam_gpu_runner.execution import attempt


class TestingBlockedDataConn:
    """A data channel whose sends block until the worker 'starts' the bundle."""

    __test__ = False

    def __init__(self) -> None:
        self.started = threading.Event()
        self.messages: list[bytes] = []
        self.closed = threading.Event()

    def output_stream(self, instruction_id: str, transform_id: str):
        def send(data: bytes) -> None:
            self.started.wait()   # the worker reads only once the bundle started
            self.messages.append(data)

        def close(data: bytes) -> None:
            send(data)
            self.closed.set()

        return SizeBasedBufferingClosableOutputStream(close, flush_callback=send)


class TestingWorkerHandler:
    __test__ = False

    def __init__(self) -> None:
        self.data_conn = TestingBlockedDataConn()


def _manager(worker: TestingWorkerHandler) -> attempt._BundleManager:
    manager = attempt._BundleManager.__new__(attempt._BundleManager)
    manager._worker_handler = worker   # what process_bundle sets before sending
    return manager


def test_large_input_is_sent_in_pieces_without_blocking_the_request():
    worker = TestingWorkerHandler()
    chunks = [bytes([i]) * (attempt.INPUT_MESSAGE_BYTES // 2) for i in range(6)]
    _manager(worker)._send_input_to_worker("bundle_1", "read", chunks)
    # Returned although nothing could be sent yet: the request can go out now.
    assert not worker.data_conn.closed.is_set()
    worker.data_conn.started.set()
    assert worker.data_conn.closed.wait(10)
    assert b"".join(worker.data_conn.messages) == b"".join(chunks)
    assert len([m for m in worker.data_conn.messages if m]) == 3   # ~1 MB pieces


def test_small_input_is_one_message_sent_inline():
    worker = TestingWorkerHandler()
    worker.data_conn.started.set()
    _manager(worker)._send_input_to_worker("bundle_2", "read", [b"ab", b"cd"])
    assert worker.data_conn.closed.is_set() and worker.data_conn.messages == [b"abcd"]
