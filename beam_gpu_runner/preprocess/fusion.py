"""Fusion into stages with Beam's own translation phases (as FnApiRunner does)."""
from __future__ import annotations

import copy
from typing import Iterable, Iterator

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from beam_gpu_runner.bridge import beam
from beam_gpu_runner.bridge.beam import Stage, TransformContext
from beam_gpu_runner.bridge.reverse_test_stream import reverse_test_stream_dofns
from beam_gpu_runner.preprocess.stage_graph import is_streaming
from beam_gpu_runner.preprocess.test_stream_inputs import (
    test_stream_to_input, windowed_test_stream_coders)
from beam_gpu_runner.preprocess.chaining import chain_into_accelerators
from beam_gpu_runner.preprocess.pair_with_timing import pair_with_timing_to_runner


def keep_timestamped_combiners_unlifted(stages: Iterable[Stage], context: TransformContext
                                        ) -> Iterator[Stage]:
    """In a streaming pipeline, a CombinePerKey whose windowing combines output
    timestamps (OUTPUT_AT_EARLIEST / LATEST) is expanded, not lifted.

    Beam's SDK pre-combines a bundle's values into one accumulator with one
    timestamp before the GroupByKey, and the GroupByKey's trigger driver sets
    its watermark hold from that timestamp only when it is not behind the
    output watermark. A bundle mixing late-ish values (behind the watermark)
    with on-time ones thus loses the hold of the on-time values and the pane
    gets the end of the window as timestamp, where Beam's DirectRunner (which
    does not lift) gives the earliest on-time value's. Runs before
    ``lift_combiners``, which then leaves the expanded transforms alone.
    Streaming here means an unbounded PCollection (``is_streaming``); a bounded
    pipeline run with ``--streaming`` still lifts (fusion does not see the flag).
    """
    stages = list(stages)
    if not is_streaming(context.components):
        yield from stages
        return
    components = context.components
    end_of_window = beam_runner_api_pb2.OutputTime.END_OF_WINDOW
    for stage in stages:
        transform = stage.transforms[0] if len(stage.transforms) == 1 else None
        if (transform is None
                or transform.spec.urn != common_urns.composites.COMBINE_PER_KEY.urn
                or not transform.subtransforms):
            yield stage
            continue
        [input_pcoll] = list(transform.inputs.values())
        windowing = components.windowing_strategies[
            components.pcollections[input_pcoll].windowing_strategy_id]
        if windowing.output_time == end_of_window:
            yield stage
            continue
        for sub in transform.subtransforms:
            yield Stage(
                components.transforms[sub].unique_name, [components.transforms[sub]],
                downstream_side_inputs=stage.downstream_side_inputs,
                must_follow=stage.must_follow, parent=stage.name,
                environment=stage.environment)


#: Beam's phases, in FnApiRunner's order. Beam refuses to fuse transforms whose
#: environments differ, and each distinct set of resource hints is its own
#: environment, so hinted transforms land in their own stages.
PHASES = (
    beam.PHASES["annotate_downstream_side_inputs"],
    beam.PHASES["fix_side_input_pcoll_coders"],
    beam.PHASES["pack_combiners"],
    keep_timestamped_combiners_unlifted,
    beam.PHASES["lift_combiners"],
    beam.PHASES["expand_sdf"],
    beam.PHASES["expand_gbk"],
    reverse_test_stream_dofns,
    pair_with_timing_to_runner,
    beam.PHASES["sink_flattens"],
    chain_into_accelerators,
    beam.PHASES["greedily_fuse"],
    beam.PHASES["read_to_impulse"],
    beam.PHASES["impulse_to_input"],
    test_stream_to_input,
    beam.PHASES["sort_stages"],
    beam.PHASES["add_impulse_to_dangling_transforms"],
    beam.PHASES["setup_timer_mapping"],
    beam.PHASES["populate_data_channel_coders"],
    windowed_test_stream_coders,
)


def fuse(pipeline_proto: beam_runner_api_pb2.Pipeline, is_drain: bool = False,
         chaining: bool = True) -> tuple[TransformContext, list[Stage]]:
    """Beam's fusion with our phases; ``chaining=False`` keeps hinted
    transforms apart from their unhinted neighbours (``preprocess.chaining``)."""
    phases = [p for p in PHASES if chaining or p is not chain_into_accelerators]
    return beam.create_and_optimize_stages(
        copy.deepcopy(pipeline_proto),
        phases=phases,
        known_runner_urns=frozenset([
            common_urns.primitives.FLATTEN.urn,
            common_urns.primitives.GROUP_BY_KEY.urn,
        ]),
        use_state_iterables=False,
        is_drain=is_drain)
