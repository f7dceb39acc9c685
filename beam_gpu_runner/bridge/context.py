"""One job's view of Beam's execution context: coders, descriptors, side inputs.

``JobContext`` wraps Beam's ``FnApiRunnerExecutionContext`` (which knows the
pipeline's coders, runner-safe coders and windowing strategies, builds each
stage's process bundle descriptor and commits side inputs to the state API)
and answers, in one place, every question the rest of the runner asks of it:
which coder reads a channel, which descriptor runs a stage (or its draining
variant), what the impulses are, how a GroupByKey's input is grouped.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from apache_beam.portability.api import beam_fn_api_pb2, beam_runner_api_pb2

from beam_gpu_runner.bridge.beam import DATA_INPUT_URN, beam_execution
from beam_gpu_runner.bridge.buffers import BufferId, Chunks
from beam_gpu_runner.bridge.grouped import GroupingMemory, Groups, released_by_window

_LOG = logging.getLogger(__name__)

StageContext = beam_execution.BundleContextManager
DescriptorSink = Callable[[beam_fn_api_pb2.ProcessBundleDescriptor], None]
#: (stage, components) -> the stage with Beam's truncate step, or None
DrainVariant = Callable[[Any, beam_runner_api_pb2.Components], Optional[Any]]


class JobContext:
    """See the module docstring. Built and used on the driver thread."""

    def __init__(self, stages: Sequence[Any], components: beam_runner_api_pb2.Components,
                 safe_coders: Mapping[str, str], data_channel_coders: Mapping[str, str],
                 services: Any, register: DescriptorSink,
                 drain_variant: Optional[DrainVariant] = None,
                 memory: Optional[GroupingMemory] = None) -> None:
        """``services``: what Beam calls the worker handler manager (the job's
        Fn API endpoints and state servicer, ``workers.registry``);
        ``register`` makes a process bundle descriptor known to workers."""
        self._beam = beam_execution.FnApiRunnerExecutionContext(
            list(stages), services, components, dict(safe_coders),
            dict(data_channel_coders), 1)
        self._register = register
        self._drain_variant = drain_variant
        #: the budget grouped data draws from, and where it spills (None: no bound)
        self.memory = memory
        self._stages = {s.name: s for s in stages}
        self._contexts: dict[str, StageContext] = {}
        #: stage -> its draining variant's context (None: it has none)
        self._draining: dict[str, Optional[StageContext]] = {}
        self._initial: list[tuple[str, dict[str, tuple[Chunks, ...]]]] = []

    # ---- start ------------------------------------------------------------------

    def setup(self) -> None:
        """Point every data channel at the job's endpoints (Beam rewrites the
        stages' payloads), register every stage's descriptor, and take over
        the impulses Beam queued."""
        self._beam.setup()
        for name, stage in self._stages.items():
            context = self._beam.bundle_manager_for(stage)
            self._contexts[name] = context
            self._register(context.process_bundle_descriptor)
        queues = self._beam.queues
        pending = []
        while len(queues.ready_inputs):
            pending.append(queues.ready_inputs.deque())
        while len(queues.watermark_pending_inputs):
            (stage_name, _), data_input = queues.watermark_pending_inputs.deque()
            pending.append((stage_name, data_input))
        for stage_name, data_input in pending:
            self._initial.append((stage_name, {
                transform: (Chunks.of(buffer, self.input_coder(stage_name, transform), 1),)
                for transform, buffer in data_input.data.items()}))

    def initial_inputs(self) -> list[tuple[str, dict[str, tuple[Chunks, ...]]]]:
        return list(self._initial)

    # ---- stages -----------------------------------------------------------------

    @property
    def components(self) -> beam_runner_api_pb2.Components:
        return self._beam.pipeline_components

    def stage(self, stage_name: str, drain: bool = False) -> StageContext:
        """The stage's context; for a draining bundle of a stage that reads a
        splittable DoFn, the variant that truncates restrictions (built and
        registered on first use)."""
        context = self._contexts[stage_name]
        if not drain or self._drain_variant is None:
            return context
        if stage_name not in self._draining:
            variant = self._drain_variant(context.stage, self.components)
            drained = None
            if variant is not None:
                drained = beam_execution.BundleContextManager(
                    self._beam, variant, 1, split_managers=())
                self._register(drained.process_bundle_descriptor)
                _LOG.info("Draining: stage %s truncates its restrictions from now on",
                          stage_name)
            self._draining[stage_name] = drained
        return self._draining[stage_name] or context

    def input_coder(self, stage_name: str, transform: str) -> Any:
        return self._contexts[stage_name].get_input_coder_impl(transform)

    def timer_coder(self, stage: StageContext, transform: str, family: str) -> Any:
        return stage.get_timer_coder_impl(transform, family)

    # ---- coders and windowing (the one place that looks them up) ----------------

    def channel_coder(self, pcollection: str, safe: bool = True) -> Any:
        """The coder of a PCollection's data channel: the runner-safe one by
        default (what the driver may decode), or the real one."""
        coder_id = self._beam.data_channel_coders[pcollection]
        if safe:
            coder_id = self._beam.safe_coders.get(coder_id, coder_id)
        return self._beam.pipeline_context.coders[coder_id]

    def coder(self, coder_id: str) -> Any:
        return self._beam.pipeline_context.coders[coder_id]

    def windowing(self, pcollection: str, safe: bool = True) -> Any:
        strategy_id = self.components.pcollections[pcollection].windowing_strategy_id
        if safe:
            strategy_id = self._beam.safe_windowing_strategies[strategy_id]
        return self._beam.pipeline_context.windowing_strategies[strategy_id]

    def gbk_pcollections(self, buffer: BufferId) -> tuple[str, str]:
        """(input, output) PCollections of the GroupByKey a GROUP buffer feeds."""
        transform = self.components.transforms[buffer.name]
        [input_pcoll] = list(transform.inputs.values())
        [output_pcoll] = list(transform.outputs.values())
        return input_pcoll, output_pcoll

    def empty_groups(self, buffer: BufferId) -> Groups:
        """An empty grouping of a GroupByKey's input, with the coders and
        windowing Beam's execution context would use."""
        input_pcoll, output_pcoll = self.gbk_pcollections(buffer)
        return Groups(self.channel_coder(input_pcoll), self.channel_coder(output_pcoll),
                      self.windowing(input_pcoll), self.memory)

    def released_by_window(self, buffer: BufferId) -> bool:
        input_pcoll, _ = self.gbk_pcollections(buffer)
        strategy_id = self.components.pcollections[input_pcoll].windowing_strategy_id
        return released_by_window(self.components.windowing_strategies[strategy_id])

    # ---- side inputs ------------------------------------------------------------

    def side_input_consumers(self, stage_name: str, buffer: BufferId) -> dict[Any, Any]:
        descriptors = self._beam.side_input_descriptors_by_stage.get(stage_name, {})
        raw = buffer.encode()
        return {k: v for k, v in descriptors.items() if v[0] == raw}

    def commit_side_inputs(self, stage_name: str, buffer: BufferId,
                           chunks: Iterable[bytes]) -> None:
        """Serve what a stage wrote to ``buffer`` as the side inputs that read it."""
        consumers = self.side_input_consumers(stage_name, buffer)
        if not consumers:
            return
        raw = buffer.encode()
        listed = beam_execution.ListBuffer(None)
        for chunk in chunks:
            listed.append(chunk)
        self._beam.pcoll_buffers[raw] = listed
        try:
            self._beam.commit_side_inputs_to_state(consumers)
        finally:
            self._beam.pcoll_buffers.pop(raw, None)

    # ---- the Fn API view of a stage ---------------------------------------------

    def data_inputs(self, stage: StageContext) -> dict[str, BufferId]:
        """Data input transform -> the buffer it reads (before setup rewrote
        the payloads: from the context's own map)."""
        out = {}
        for transform in stage.stage.transforms:
            if transform.spec.urn == DATA_INPUT_URN:
                out[transform.unique_name] = BufferId.parse(
                    self._beam.input_transform_to_buffer_id[transform.unique_name])
        return out

    def data_outputs(self, stage: StageContext) -> dict[str, BufferId]:
        """Data output transform -> the buffer it writes. From the stage's own
        context, built before setup rewrote the payloads (a draining variant,
        built later from the rewritten stage, has the same data transforms)."""
        original = self._contexts.get(stage.stage.name, stage)
        return {transform: BufferId.parse(raw)
                for transform, raw in original.stage_data_outputs.items()}

    @staticmethod
    def timer_outputs(stage: StageContext) -> dict[tuple[str, str], BufferId]:
        return {key: BufferId.parse(raw)
                for key, (raw, _domain) in stage.stage_timer_outputs.items()}

    def close(self) -> None:
        """Drop the references that pin the job's data (buffers, state)."""
        self._contexts.clear()
        self._draining.clear()
        self._initial.clear()
        if self.memory is not None:
            self.memory.close()


__all__ = ["JobContext", "StageContext"]
