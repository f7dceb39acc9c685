"""Which pipelines the runner accepts: FnApiRunner's checks, plus TestStream."""
from __future__ import annotations

import copy

from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner

from beam_gpu_runner.preprocess.test_stream import test_streams


def check_requirements(pipeline_proto: beam_runner_api_pb2.Pipeline) -> None:
    """FnApiRunner's requirement checks; TestStream, which FnApiRunner refuses,
    is a runner primitive here (see ``preprocess.test_stream``)."""
    checked = pipeline_proto
    streams = test_streams(pipeline_proto.components)
    if streams:
        checked = copy.deepcopy(pipeline_proto)
        for transform_id in streams:
            del checked.components.transforms[transform_id]
    checker = fn_runner.FnApiRunner()
    checker._validate_requirements(pipeline_proto)
    checker._check_requirements(checked)
