"""One attempt over the Fn API, against a fake worker (no processes)."""
from __future__ import annotations

import threading

import pytest
from apache_beam.coders import coders
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker.data_plane import SizeBasedBufferingClosableOutputStream

from beam_gpu_runner.bridge import fnapi
from beam_gpu_runner.bridge.buffers import Chunks
from beam_gpu_runner.bridge.workers import Worker

INTS = coders.VarIntCoder().get_impl()


class TestingFuture:
    __test__ = False

    def __init__(self, response=None) -> None:
        self.response = response
        self.done = threading.Event()
        if response is not None:
            self.done.set()

    def set(self, response) -> None:
        self.response = response
        self.done.set()

    def is_done(self) -> bool:
        return self.done.is_set()

    def get(self, timeout=None):
        assert self.done.wait(10), "nobody answered the request"
        return self.response


class TestingDataConn:
    """Sends block until the worker 'starts' the bundle; outputs are scripted."""

    __test__ = False

    def __init__(self, outputs=()) -> None:
        self.started = threading.Event()
        self.messages: list[bytes] = []
        self.timers: list[tuple[str, str, bytes]] = []
        self.closed = threading.Event()
        self.outputs = list(outputs)
        self.expected = None

    def _enqueue_to_send(self, message: beam_fn_api_pb2.Elements.Data) -> None:
        """Beam's send queue (bridge.beam.data_channel_send)."""
        self.started.wait()   # the worker reads only once the bundle started
        if message.is_last:
            assert not message.data
            self.closed.set()
        else:
            assert message.data and message.transform_id == "read"
            self.messages.append(message.data)

    def output_timer_stream(self, instruction_id, transform_id, family):
        def send(data: bytes) -> None:
            if data:
                self.timers.append((transform_id, family, data))
        return SizeBasedBufferingClosableOutputStream(send, flush_callback=send)

    def input_elements(self, instruction_id, expected, abort_callback=None):
        self.expected = list(expected)
        for message in self.outputs:
            message.instruction_id = instruction_id
            yield message


class TestingHandler:
    __test__ = False

    def __init__(self, data_conn, answers) -> None:
        self.worker_id = "worker-1"
        self.data_conn = data_conn
        self.answers = answers
        self.requests: list[beam_fn_api_pb2.InstructionRequest] = []
        self.control_conn = self

    def push(self, request):
        self.requests.append(request)
        kind = request.WhichOneof("request")
        return self.answers[kind](request)

    def abort(self, error) -> None:
        pass


def ok(request) -> TestingFuture:
    return TestingFuture(beam_fn_api_pb2.InstructionResponse(
        instruction_id=request.instruction_id))


def plan(inputs, timers=None, outputs=None) -> fnapi.AttemptPlan:
    return fnapi.AttemptPlan("descriptor-1", inputs, timers or {},
                             outputs or {}, cache_token=None)


def test_large_input_is_sent_in_pieces_without_blocking_the_request():
    conn = TestingDataConn()
    handler = TestingHandler(conn, {"process_bundle": ok})
    chunks = [bytes([i]) * (fnapi.INPUT_MESSAGE_BYTES // 2) for i in range(6)]
    attempt = fnapi.Attempt(plan({"read": Chunks.of(chunks, None)}), Worker(handler))
    attempt.run()   # returned although no input could be sent yet
    assert not conn.closed.is_set()
    assert handler.requests[0].process_bundle.process_bundle_descriptor_id == "descriptor-1"
    conn.started.set()
    assert conn.closed.wait(10)
    assert b"".join(conn.messages) == b"".join(chunks)
    assert len([m for m in conn.messages if m]) == 3   # ~1 MB pieces


def test_small_input_is_one_message_sent_inline():
    conn = TestingDataConn()
    conn.started.set()
    attempt = fnapi.Attempt(plan({"read": Chunks.of([b"ab", b"cd"], None)}),
                            Worker(TestingHandler(conn, {"process_bundle": ok})))
    attempt.run()
    assert conn.closed.is_set() and conn.messages == [b"abcd"]


def test_outputs_and_timers_land_in_the_attempts_own_sinks():
    conn = TestingDataConn(outputs=[
        beam_fn_api_pb2.Elements.Data(transform_id="write", data=b"x"),
        beam_fn_api_pb2.Elements.Timers(transform_id="t", timer_family_id="f",
                                        timers=b"tm"),
        beam_fn_api_pb2.Elements.Data(transform_id="write", data=b"y")])
    conn.started.set()
    attempt = fnapi.Attempt(
        plan({"read": Chunks.of([b"in"], None)}, timers={("t", "f"): [b"fired"]},
             outputs={"write": fnapi.ChunkSink}),
        Worker(TestingHandler(conn, {"process_bundle": ok})))
    result = attempt.run()
    assert result.outputs == {"write": [b"x", b"y"]}
    assert result.timers == {("t", "f"): [b"tm"]}
    assert conn.timers == [("t", "f", b"fired")]
    assert set(conn.expected) == {"write", ("t", "f")}
    assert result.worker_id == "worker-1" and result.bytes_out == 2


def test_a_failed_bundle_raises_the_workers_error():
    conn = TestingDataConn()
    conn.started.set()

    def failed(request):
        return TestingFuture(beam_fn_api_pb2.InstructionResponse(
            instruction_id=request.instruction_id, error="ZeroDivisionError in Map(f)"))

    attempt = fnapi.Attempt(plan({"read": Chunks.of([b"x"], None)}),
                            Worker(TestingHandler(conn, {"process_bundle": failed})))
    with pytest.raises(fnapi.BundleError, match="ZeroDivisionError in Map"):
        attempt.run()


def test_a_stopped_worker_refuses_requests_at_once():
    conn = TestingDataConn()
    worker = Worker(TestingHandler(conn, {"process_bundle": ok}))
    worker.stop_requests(RuntimeError("worker-1 was stopped"))
    attempt = fnapi.Attempt(plan({"read": Chunks.of([b"x"], None)}), worker)
    with pytest.raises(RuntimeError, match="stopped"):
        attempt.run()


def test_split_asks_for_the_remainder_with_the_element_count():
    release = TestingFuture()
    splits = []

    def split(request):
        splits.append(request.process_bundle_split)
        return TestingFuture(beam_fn_api_pb2.InstructionResponse(
            process_bundle_split=beam_fn_api_pb2.ProcessBundleSplitResponse(
                channel_splits=[beam_fn_api_pb2.ProcessBundleSplitResponse.ChannelSplit(
                    transform_id="read", last_primary_element=3,
                    first_residual_element=4)])))

    conn = TestingDataConn()
    conn.started.set()
    handler = TestingHandler(conn, {"process_bundle": lambda r: release,
                                    "process_bundle_split": split})
    data = Chunks.of([INTS.encode_nested(i) for i in range(10)], INTS, 10)
    attempt = fnapi.Attempt(plan({"read": data}), Worker(handler))
    assert attempt.split(0.5) is None   # not started: nothing to split
    runner = threading.Thread(target=attempt.run)
    runner.start()
    while not any(r.HasField("process_bundle") for r in handler.requests):
        threading.Event().wait(0.01)
    answer = attempt.split(0.5)
    assert answer.channel_splits[0].first_residual_element == 4
    desired = splits[0].desired_splits["read"]
    assert desired.fraction_of_remainder == 0.5 and desired.estimated_input_elements == 10
    release.set(beam_fn_api_pb2.InstructionResponse())
    runner.join(10)
    assert attempt.split(0.5) is None   # done: nothing to split


def test_an_empty_or_failed_split_answer_is_a_refusal():
    for answer in (beam_fn_api_pb2.InstructionResponse(),
                   beam_fn_api_pb2.InstructionResponse(error="Unknown process bundle")):
        release = TestingFuture()
        conn = TestingDataConn()
        conn.started.set()
        handler = TestingHandler(conn, {"process_bundle": lambda r: release,
                                        "process_bundle_split":
                                            lambda r, a=answer: TestingFuture(a)})
        attempt = fnapi.Attempt(plan({"read": Chunks.of([b"x"], None, 1)}),
                                Worker(handler))
        runner = threading.Thread(target=attempt.run)
        runner.start()
        while not handler.requests:
            threading.Event().wait(0.01)
        assert attempt.split(0.5) is None
        release.set(beam_fn_api_pb2.InstructionResponse())
        runner.join(10)
