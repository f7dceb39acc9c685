"""Which pipelines the runner accepts: FnApiRunner's checks, plus TestStream."""
from __future__ import annotations

import copy

from apache_beam.portability.api import beam_runner_api_pb2
from beam_gpu_runner.bridge.beam import check_requirements as beam_checks
from beam_gpu_runner.bridge.test_stream_events import test_streams


def check_requirements(pipeline_proto: beam_runner_api_pb2.Pipeline) -> None:
    """FnApiRunner's requirement checks; TestStream, which FnApiRunner refuses,
    is a runner primitive here (see ``preprocess.test_stream_inputs``)."""
    checked = pipeline_proto
    streams = test_streams(pipeline_proto.components)
    if streams:
        checked = copy.deepcopy(pipeline_proto)
        for transform_id in streams:
            del checked.components.transforms[transform_id]
    beam_checks(pipeline_proto, checked)
