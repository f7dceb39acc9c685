"""Bundles to attempt plans and attempt results to engine events, on real
fused stages of small pipelines, without workers (bridge/bundles.py)."""
from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_fn_api_pb2, endpoints_pb2
from apache_beam.runners.pipeline_utils import merge_common_environments
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from google.protobuf import timestamp_pb2
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

from beam_gpu_runner.bridge.beam import resolve_any_environments, worker_handlers
from beam_gpu_runner.bridge.buffers import Chunks
from beam_gpu_runner.bridge.bundles import BundleBridge, PayloadDivider, timer_family_key
from beam_gpu_runner.bridge.context import JobContext
from beam_gpu_runner.bridge.fnapi import AttemptPlan, AttemptResult, ChunkSink
from beam_gpu_runner.bridge.grouped import Groups
from beam_gpu_runner.engine.events import Bundle, BundleSplit, SplitRefused
from beam_gpu_runner.preprocess.fusion import fuse
from beam_gpu_runner.runner import worker_environment

INTS = coders.VarIntCoder().get_impl()


class TestingEndpoints:
    __test__ = False

    def data_api_service_descriptor(self) -> endpoints_pb2.ApiServiceDescriptor:
        return endpoints_pb2.ApiServiceDescriptor(url="localhost:1")

    def state_api_service_descriptor(self) -> endpoints_pb2.ApiServiceDescriptor:
        return endpoints_pb2.ApiServiceDescriptor(url="localhost:2")


class TestingServices:
    """What Beam's context asks of the job's Fn API services."""

    __test__ = False

    def __init__(self) -> None:
        self.state_servicer = worker_handlers.StateServicer()
        self.descriptors: dict[str, Any] = {}

    def get_worker_handlers(self, environment: Any, num_workers: int) -> list:
        return [TestingEndpoints()]

    def register(self, descriptor: Any) -> None:
        self.descriptors[descriptor.id] = descriptor


def context_of(build) -> tuple[JobContext, list, TestingServices]:
    p = beam.Pipeline(options=PipelineOptions([]))
    build(p)
    proto = merge_common_environments(resolve_any_environments(
        p.to_runner_api(default_environment=worker_environment())))
    ctx, stages = fuse(proto)
    services = TestingServices()
    job = JobContext(stages, ctx.components, ctx.safe_coders, ctx.data_channel_coders,
                     services, services.register)
    job.setup()
    return job, stages, services


def group_by_key(p):
    (p | "Read" >> beam.Create([("a", 1), ("b", 2)], reshuffle=False)
     | "Group" >> beam.GroupByKey()
     | "Use" >> beam.MapTuple(lambda k, vs: (k, sorted(vs))))


def test_a_root_stage_plans_its_impulse_and_a_grouping_sink():
    job, stages, services = context_of(group_by_key)
    [(root, inputs)] = job.initial_inputs()
    bridge = BundleBridge(job, streaming=False)
    plan = bridge.plan(Bundle("b1", root, inputs))
    assert plan.descriptor_id in services.descriptors
    [(read, chunks)] = plan.inputs.items()
    assert chunks.elements == 1 and chunks.nbytes > 0      # the impulse
    [factory] = plan.outputs.values()
    assert isinstance(factory(), Groups)                  # grouped as it arrives
    assert plan.timers == {}


def kv_chunk(pairs) -> bytes:
    impl = coders.WindowedValueCoder(
        coders.TupleCoder([coders.BytesCoder(), coders.BytesCoder()]),
        coders.GlobalWindowCoder()).get_impl()
    return b"".join(impl.encode_nested(GlobalWindows.windowed_value(p)) for p in pairs)


def test_outputs_of_several_writers_of_one_buffer_are_one_output():
    """A Flatten's inputs, fused in one stage (a CoGroupByKey's tagged
    inputs), write one buffer: their chunks come out as one payload."""
    def build(p):
        nums = p | "Nums" >> beam.Create([1, 2], reshuffle=False)
        a = nums | "A" >> beam.Map(lambda x: ("k", x))
        b = nums | "B" >> beam.Map(lambda x: ("k", -x))
        _ = ({"a": a, "b": b} | beam.CoGroupByKey())
    job, stages, _ = context_of(build)
    bridge = BundleBridge(job, streaming=False)
    [(stage_name, inputs)] = job.initial_inputs()
    stage = job.stage(stage_name)
    outputs = job.data_outputs(stage)
    assert len(outputs) == 2 and len(set(outputs.values())) == 1
    bundle = Bundle("b1", stage_name, inputs)
    plan = bridge.plan(bundle)
    sinks = {t: plan.outputs[t]() for t in outputs}
    for number, sink in enumerate(sinks.values()):
        assert isinstance(sink, ChunkSink)
        sink.append(b"chunk-%d" % number)
    event = bridge.succeeded(bundle, plan, AttemptResult(
        beam_fn_api_pb2.InstructionResponse(), outputs=sinks))
    [(buffer, (chunks,))] = event.produced.items()
    assert buffer == str(next(iter(outputs.values())))
    assert chunks.chunks == (b"chunk-0", b"chunk-1")


class TestingSplitAttempt:
    """An attempt whose worker answers splits from a script."""

    __test__ = False

    def __init__(self, plan: AttemptPlan, answers: list) -> None:
        self.plan = plan
        self.split_ledger = None
        self._answers = answers

    def split(self, fraction: float):
        return self._answers.pop(0)


def channel_split(transform: str, last_primary: int, first_residual: int):
    return beam_fn_api_pb2.ProcessBundleSplitResponse(channel_splits=[
        beam_fn_api_pb2.ProcessBundleSplitResponse.ChannelSplit(
            transform_id=transform, last_primary_element=last_primary,
            first_residual_element=first_residual)])


def test_splits_are_exact_across_several_splits_of_one_attempt():
    job, stages, _ = context_of(group_by_key)
    [(root, inputs)] = job.initial_inputs()
    bridge = BundleBridge(job, streaming=False)
    [read] = list(inputs)
    data = Chunks.of([b"".join(INTS.encode_nested(i) for i in range(10))], INTS, 10)
    plan = AttemptPlan("d", {read: data}, {}, {})
    attempt = TestingSplitAttempt(plan, [channel_split(read, 3, 4), channel_split(read, 1, 2),
                                         None])
    bundle = Bundle("b1", root, {read: (data,)})
    first = bridge.split(bundle, attempt, 0.5)   # type: ignore[arg-type]
    assert isinstance(first, BundleSplit)
    values = lambda event_inputs: [INTS.decode_nested(e) for p in event_inputs[read]
                                   for e in p.element_bytes()]
    assert values(first.primary) == [0, 1, 2, 3]
    assert values(first.residual) == [4, 5, 6, 7, 8, 9]
    second = bridge.split(bundle, attempt, 0.5)   # type: ignore[arg-type]
    assert values(second.primary) == [0, 1]
    assert values(second.residual) == [2, 3]      # what it still had, nothing twice
    assert isinstance(bridge.split(bundle, attempt, 0.5), SplitRefused)  # type: ignore


def test_a_checkpoint_of_a_splittable_dofn_holds_its_remainder_at_the_sdks_estimate():
    job, stages, _ = context_of(group_by_key)
    [(root, inputs)] = job.initial_inputs()
    bridge = BundleBridge(job, streaming=False)
    [read] = list(inputs)
    data = Chunks.of([INTS.encode_nested(7)], INTS, 1)
    transforms = job.stage(root).process_bundle_descriptor.transforms
    [read_output] = transforms[read].outputs.values()
    [(fed, input_id)] = [(t, name) for t, proto in transforms.items()
                         for name, pcoll in proto.inputs.items() if pcoll == read_output]
    residual_root = beam_fn_api_pb2.DelayedBundleApplication(
        application=beam_fn_api_pb2.BundleApplication(
            transform_id=fed, input_id=input_id, element=INTS.encode_nested(8),
            output_watermarks={"out": timestamp_pb2.Timestamp(seconds=5, nanos=2000)}))
    primary_root = beam_fn_api_pb2.BundleApplication(
        transform_id=fed, input_id=input_id, element=INTS.encode_nested(7))

    def answer(with_watermark: bool):
        root = beam_fn_api_pb2.DelayedBundleApplication()
        root.CopyFrom(residual_root)
        if not with_watermark:
            root.application.ClearField("output_watermarks")
        return beam_fn_api_pb2.ProcessBundleSplitResponse(
            primary_roots=[primary_root], residual_roots=[root],
            channel_splits=[beam_fn_api_pb2.ProcessBundleSplitResponse.ChannelSplit(
                transform_id=read, last_primary_element=-1, first_residual_element=1)])

    for with_watermark, hold in ((True, 5_000_002), (False, None)):
        plan = AttemptPlan("d", {read: data}, {}, {})
        attempt = TestingSplitAttempt(plan, [answer(with_watermark)])
        event = bridge.split(Bundle("b1", root, {read: (data,)}), attempt,   # type: ignore
                             0.0)
        assert isinstance(event, BundleSplit) and event.residual_hold == hold
        [payload] = event.residual[read]
        assert [INTS.decode_nested(e) for e in payload.element_bytes()] == [8]


def test_the_divider_cuts_chunks_and_groups():
    divider = PayloadDivider()
    data = Chunks.of([b"".join(INTS.encode_nested(i) for i in range(6))], INTS, 6)
    assert divider.elements((data,)) == 6
    parts = divider.divide((data,), 3)
    assert [p[0].elements for p in parts] == [2, 2, 2]
    groups = Groups(coders.WindowedValueCoder(
        coders.TupleCoder([coders.BytesCoder(), coders.BytesCoder()]),
        coders.GlobalWindowCoder()), coders.WindowedValueCoder(
        coders.TupleCoder([coders.BytesCoder(), coders.IterableCoder(coders.BytesCoder())]),
        coders.GlobalWindowCoder()), beam.transforms.core.Windowing(GlobalWindows()))
    groups.append(kv_chunk([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]))
    assert divider.elements((groups,)) == 3
    assert sorted(p[0].keys for p in divider.divide((groups,), 2)) == [1, 2]
    assert divider.elements((data, groups)) == 0   # mixed: left whole


def test_timer_updates_are_keyed_by_user_key_tag_and_window():
    class Timed(beam.DoFn):
        TIMER = userstate.TimerSpec("t", userstate.TimeDomain.WATERMARK)

        def process(self, kv, timer=beam.DoFn.TimerParam(TIMER)):
            timer.set(10)

        @userstate.on_timer(TIMER)
        def fire(self):
            yield 1

    def build(p):
        (p | beam.Create([("k", 1)], reshuffle=False) | "Timed" >> beam.ParDo(Timed()))

    job, stages, _ = context_of(build)
    bridge = BundleBridge(job, streaming=False)
    timed = next(s for s in stages if s.is_stateful())
    stage = job.stage(timed.name)
    [(transform, family)] = list(stage.stage_timer_outputs)
    coder = stage.get_timer_coder_impl(transform, family)
    pane = PaneInfo(True, True, PaneInfoTiming.UNKNOWN, 0, 0)

    def timer(fire, clear=False):
        return coder.encode_nested(userstate.Timer(
            user_key="k", dynamic_timer_tag="", windows=(GlobalWindow(),),
            clear_bit=clear, fire_timestamp=Timestamp(fire), hold_timestamp=Timestamp(fire),
            paneinfo=pane))

    result = AttemptResult(beam_fn_api_pb2.InstructionResponse(),
                           timers={(transform, family): [timer(5) + timer(7),
                                                         timer(0, clear=True)]})
    updates = bridge._timer_updates(stage, result)
    key = timer_family_key(transform, family)
    assert [u.family for u in updates] == [key] * 3
    assert updates[0].key == updates[1].key == updates[2].key   # one timer identity
    assert updates[1].fire_at == 7_000_000 and updates[2].payload is None
