"""ReverseTestStream's DoFns swapped for SDK-harness-safe ones at fusion
(preprocess/reverse_test_stream.py); no job runs here. Beam's own cases run
in test_beam_streaming_suite.py."""
from __future__ import annotations

import subprocess
import sys

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_interactive_api_pb2, beam_runner_api_pb2
from apache_beam.testing import test_stream as beam_ts
from apache_beam.transforms.userstate import BagStateSpec
from apache_beam.utils.timestamp import Timestamp

from beam_gpu_runner.bridge import reverse_test_stream as rts
from beam_gpu_runner.preprocess.fusion import fuse


class FakeBag:
    """The SDK harness's bag: read() is an iterable, not an iterator."""

    def __init__(self) -> None:
        self.values: list = []

    def read(self):
        return tuple(self.values)

    def add(self, value) -> None:
        self.values.append(value)

    def clear(self) -> None:
        self.values.clear()


class FakeTimer:
    def __init__(self) -> None:
        self.set_to: list = []

    def set(self, ts) -> None:
        self.set_to.append(ts)


class KeepsAnExecuteOnceBag(beam.DoFn):
    """A user's stateful DoFn whose bag has ReverseTestStream's bag name."""

    EXECUTE_ONCE_STATE = BagStateSpec("execute_once_state", beam.coders.VarIntCoder())

    def process(self, e, bag=beam.DoFn.StateParam(EXECUTE_ONCE_STATE)):
        yield e


def _pardo_fns(stages):
    fns = {}
    for stage in stages:
        for t in stage.transforms:
            if t.spec.urn == common_urns.primitives.PAR_DO.urn:
                payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
                try:
                    fns[t.unique_name] = pickler.loads(payload.do_fn.payload)[0]
                except Exception:   # a DoFn that is not pickled (Beam's own stateless)
                    continue
    return fns


def test_fusion_swaps_reverse_test_stream_dofns_and_leaves_others_alone():
    p = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = (p | beam_ts.TestStream().add_elements(["a"])
         | beam_ts.ReverseTestStream(sample_resolution_sec=1, output_tag="t")
         | beam.Map(lambda x: (0, x)) | beam.ParDo(KeepsAnExecuteOnceBag()))
    _, stages = fuse(p.to_runner_api())
    fns = _pardo_fns(stages)
    [generator] = [f for n, f in fns.items() if "_TimingEventGenerator" in n]
    [formatter] = [f for n, f in fns.items() if "_TestStreamFormatter" in n]
    [user] = [f for n, f in fns.items() if "KeepsAnExecuteOnceBag" in n]
    assert type(generator) is rts.TimingEventGenerator
    assert (generator._output_tag, generator._sample_resolution_sec) == ("t", 1)
    assert type(formatter) is rts.TestStreamFormatter
    assert type(user) is KeepsAnExecuteOnceBag


def test_the_generator_reads_its_bag_as_an_iterator_and_sends_the_header_as_bytes():
    generator = rts.TimingEventGenerator(output_tag="t", sample_resolution_sec=0.5)
    bag, timer = FakeBag(), FakeTimer()
    timing = beam_ts.TimingInfo(Timestamp(micros=2_000_000), Timestamp(micros=0))
    first = list(generator.process((0, ("a", timing)), Timestamp(0), None, timer, bag))
    header, processing_time, watermark, element = first
    assert isinstance(header, rts.FileHeader) and header.to_proto().tag == "t"
    assert processing_time == beam_ts.ProcessingTimeEvent(2)
    assert isinstance(watermark, beam_ts.WatermarkEvent)
    assert element == "a"
    assert bag.values == [False] and timer.set_to == [2.5]
    # Once per key: the bag says it was done.
    assert list(generator.process((0, ("b", timing)), Timestamp(0), None, timer, bag)) == ["b"]


def test_the_formatter_takes_the_header_back_as_a_proto():
    formatter = rts.TestStreamFormatter(beam.coders.StrUtf8Coder(),
                                        beam_ts.OutputFormat.TEST_STREAM_FILE_RECORDS)
    formatter.start_bundle()
    timing = beam_ts.TimingInfo(Timestamp(micros=1_000_000), Timestamp(micros=0))
    header = rts.FileHeader(
        beam_interactive_api_pb2.TestStreamFileHeader(tag="t").SerializeToString())
    bag = FakeBag()
    # Beam's process() buffers (returns None); finish_bundle emits.
    formatter.process((0, (header, timing)), Timestamp(0), bag)
    formatter.process((0, (beam_ts.ProcessingTimeEvent(1), timing)), Timestamp(0), bag)
    assert formatter.header == beam_interactive_api_pb2.TestStreamFileHeader(tag="t")
    assert bag.values == [Timestamp(micros=1_000_000)]


def test_only_the_generators_sampling_timer_holds_no_watermark():
    p = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = (p | beam_ts.TestStream().add_elements(["a"])
         | beam_ts.ReverseTestStream(sample_resolution_sec=1, output_tag=None))
    _, stages = fuse(p.to_runner_api())
    unheld = {}
    for stage in stages:
        for t in stage.transforms:
            if t.spec.urn == common_urns.primitives.PAR_DO.urn:
                payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
                if payload.timer_family_specs or payload.state_specs:
                    unheld[t.unique_name] = rts.unheld_timer_families(t, payload)
    sampler = rts._TimingEventGenerator.TIMING_SAMPLER.name   # "ts-timing_sampler"
    assert sorted(unheld.values(), key=len) == [frozenset(), frozenset([sampler])]


def test_proto_pickling_is_registered_only_where_asked():
    # In a fresh interpreter: registration is process-wide, so not in this one.
    code = (
        "import pickle\n"
        "from apache_beam.portability.api import beam_interactive_api_pb2 as api\n"
        "record = api.TestStreamFileRecord()\n"
        "try:\n"
        "    pickle.dumps(record)\n"
        "    print('picklable before')\n"
        "except Exception:\n"
        "    print('not picklable before')\n"
        "from beam_gpu_runner.bridge import reverse_test_stream as rts\n"
        "try:\n"
        "    pickle.dumps(record)\n"
        "    print('picklable on import')\n"
        "except Exception:\n"
        "    print('not picklable on import')\n"
        "rts.TestStreamFormatter(None, None).setup()\n"
        "assert pickle.loads(pickle.dumps(record)) == record\n"
        "print('picklable after setup')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split("\n")
    assert [line for line in out if "picklable" in line] == [
        "not picklable before", "not picklable on import", "picklable after setup"]
