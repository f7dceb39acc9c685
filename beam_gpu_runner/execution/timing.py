"""PairWithTiming on the driver: each element paired with the runner's timing.

As Beam's DirectRunner's ``_PairWithTimingEvaluator``: an element ``e`` becomes
``(e, TimingInfo(processing time, output watermark))`` with its timestamp,
windows and pane kept; processing time is the engine's (the test clock under a
TestStream), the watermark is the runner-side stage's output watermark when
the bundle runs. See ``preprocess.timing`` for how the stage is cut out.
"""
from __future__ import annotations

from typing import Any

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.testing.test_stream import TimingInfo
from apache_beam.utils.timestamp import Timestamp

from beam_gpu_runner.engine.events import Bundle, BundleSucceeded
from beam_gpu_runner.engine.timestamps import Micros
from beam_gpu_runner.execution.grouping import beam_time
from beam_gpu_runner.preprocess.timing import read_buffer


class PairWithTimingStage:
    def __init__(self, transform_id: str, in_impl: Any, out_impl: Any) -> None:
        self._out_buffer = read_buffer(transform_id)
        self._in_impl = in_impl
        self._out_impl = out_impl

    def run(self, bundle: Bundle, output_watermark: Micros,
            processing_time: float) -> BundleSucceeded:
        timing = TimingInfo(Timestamp.of(processing_time), beam_time(output_watermark))
        out = create_OutputStream()
        for payloads in bundle.inputs.values():
            for payload in payloads:
                for chunk in payload:
                    for wv in self._in_impl.decode_all(chunk):
                        self._out_impl.encode_to_stream(
                            wv.with_value((wv.value, timing)), out, True)
        buffer = beam_exec.ListBuffer(self._out_impl)
        buffer.append(out.get())
        return BundleSucceeded(bundle.id, produced={self._out_buffer: (buffer,)})


def timing_for(context: beam_exec.FnApiRunnerExecutionContext,
               transform_id: str) -> PairWithTimingStage:
    transform = context.pipeline_components.transforms[transform_id]
    [input_pcoll] = list(transform.inputs.values())
    [output_pcoll] = list(transform.outputs.values())

    def impl(pcoll: str) -> Any:
        return context.pipeline_context.coders[
            context.data_channel_coders[pcoll]].get_impl()

    return PairWithTimingStage(transform_id, impl(input_pcoll), impl(output_pcoll))
