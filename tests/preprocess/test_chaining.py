"""Chaining unhinted transforms into accelerator stages (preprocess/chaining.py)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_gpu_runner.bridge.beam import resolve_any_environments
from beam_gpu_runner.preprocess.chaining import is_hinted
from beam_gpu_runner.preprocess.fusion import fuse
from beam_gpu_runner.runner import placement_lines, worker_environment

from apache_beam.runners.pipeline_utils import merge_common_environments

GPU = "type:nvidia-h100;count:1"


def proto_of(build):
    p = beam.Pipeline(options=PipelineOptions([]))
    build(p)
    return merge_common_environments(resolve_any_environments(
        p.to_runner_api(default_environment=worker_environment())))


def read_preprocess_infer_write(p, hint=GPU):
    (p | "Read" >> beam.Create([1, 2, 3], reshuffle=False)
     | "Preprocess" >> beam.Map(lambda x: x + 1)
     | "Infer" >> beam.Map(lambda x: x * 2).with_resource_hints(accelerator=hint)
     | "Write" >> beam.Map(print))


def placement(proto, chaining=True):
    """Stage -> (hinted?, user transforms)."""
    context, stages = fuse(proto, chaining=chaining)
    return [(is_hinted(context.components, s.environment),
             sorted(t.unique_name for t in s.transforms if "/" not in t.unique_name
                    or t.unique_name.startswith(("Read", "Preprocess", "Infer", "Write"))))
            for s in stages]


def names(stages, hinted):
    return {n for h, ns in stages if h == hinted for n in ns}


def test_unhinted_neighbours_run_in_the_accelerator_stage():
    stages = placement(proto_of(read_preprocess_infer_write))
    hinted = names(stages, True)
    assert {"Preprocess", "Infer", "Write"} <= hinted
    assert len([h for h, _ in stages if h]) == 1   # one accelerator stage: nothing crosses


def test_the_option_keeps_them_apart():
    stages = placement(proto_of(read_preprocess_infer_write), chaining=False)
    assert names(stages, True) == {"Infer"}
    assert {"Preprocess", "Write"} <= names(stages, False)


def test_a_group_by_key_ends_the_chain():
    def build(p):
        (p | "Read" >> beam.Create([("a", 1)], reshuffle=False)
         | "Infer" >> beam.Map(lambda kv: kv).with_resource_hints(accelerator=GPU)
         | "Group" >> beam.GroupByKey()
         | "After" >> beam.MapTuple(lambda k, vs: (k, sum(vs))))
    context, stages = fuse(proto_of(build))
    after = [s for s in stages if any(t.unique_name == "After" for t in s.transforms)]
    assert after and not is_hinted(context.components, after[0].environment)


def test_a_chain_between_two_different_hints_is_left_alone():
    def build(p):
        (p | "Read" >> beam.Create([1], reshuffle=False)
         | "OnH100" >> beam.Map(lambda x: x).with_resource_hints(accelerator=GPU)
         | "Between" >> beam.Map(lambda x: x)
         | "OnL4" >> beam.Map(lambda x: x).with_resource_hints(
             accelerator="type:nvidia-l4;count:1"))
    context, stages = fuse(proto_of(build))
    between = [s for s in stages if any(t.unique_name == "Between" for t in s.transforms)]
    assert not is_hinted(context.components, between[0].environment)


def test_plan_says_which_transforms_were_chained_and_why():
    lines = "\n".join(placement_lines(proto_of(read_preprocess_infer_write), []))
    assert "runs on accelerator workers" in lines
    assert "'Preprocess'" in lines and "chained" in lines
    assert "--accelerator_chaining=off" in lines
    apart = "\n".join(placement_lines(proto_of(read_preprocess_infer_write),
                                      ["--accelerator_chaining=off"]))
    assert "chained onto" not in apart


def test_an_unbounded_source_is_not_chained_but_its_consumers_are():
    from apache_beam.transforms.periodicsequence import PeriodicImpulse

    def build(p):
        (p | "Source" >> PeriodicImpulse(fire_interval=1.0)
         | "Preprocess" >> beam.Map(lambda x: x)
         | "Infer" >> beam.Map(lambda x: x).with_resource_hints(accelerator=GPU)
         | "Write" >> beam.Map(print))

    context, stages = fuse(proto_of(build), chaining=True)
    by_stage = [(is_hinted(context.components, s.environment),
                 {t.unique_name for t in s.transforms}) for s in stages]
    source = [h for h, ns in by_stage if "Source/GenSequence/Process" in ns]
    assert source == [False]   # one restriction: kept on its own, not on a device
    hinted = set().union(*[ns for h, ns in by_stage if h])
    assert {"Preprocess", "Infer", "Write"} <= hinted
