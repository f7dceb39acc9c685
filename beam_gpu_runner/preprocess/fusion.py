"""Fusion into stages with Beam's own translation phases (as FnApiRunner does)."""
from __future__ import annotations

import copy

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import translations

from beam_gpu_runner.preprocess.test_stream import test_stream_to_input

#: Beam's phases, in FnApiRunner's order. Beam refuses to fuse transforms whose
#: environments differ, and each distinct set of resource hints is its own
#: environment, so hinted transforms land in their own stages.
PHASES = (
    translations.annotate_downstream_side_inputs,
    translations.fix_side_input_pcoll_coders,
    translations.pack_combiners,
    translations.lift_combiners,
    translations.expand_sdf,
    translations.expand_gbk,
    translations.sink_flattens,
    translations.greedily_fuse,
    translations.read_to_impulse,
    translations.impulse_to_input,
    test_stream_to_input,
    translations.sort_stages,
    translations.add_impulse_to_dangling_transforms,
    translations.setup_timer_mapping,
    translations.populate_data_channel_coders,
)


def fuse(pipeline_proto: beam_runner_api_pb2.Pipeline, is_drain: bool = False
         ) -> tuple[translations.TransformContext, list[translations.Stage]]:
    return translations.create_and_optimize_stages(
        copy.deepcopy(pipeline_proto),
        phases=list(PHASES),
        known_runner_urns=frozenset([
            common_urns.primitives.FLATTEN.urn,
            common_urns.primitives.GROUP_BY_KEY.urn,
        ]),
        use_state_iterables=False,
        is_drain=is_drain)
