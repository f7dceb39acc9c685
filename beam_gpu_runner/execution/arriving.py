"""GroupByKey input grouped by key as a producer bundle's output arrives.

In a batch job a GroupByKey's input used to be grouped on the driver thread
when its consumer was dispatched, after every producer bundle had finished
(Beam's ``GroupingBuffer``, ~0.5 us per element, one core while the other
idled). Now each attempt's output buffer for a ``group:`` target groups the
data as the worker sends it (``placement.harness`` sends ~1 MB messages), on
the attempt's own thread, while the producers still run; the consumer's
buffer then only merges the groups (``GroupingBuffer.extend``).

Only for GroupByKey inputs that go to their consumer whole (global or
merging windows); inputs of other windows are cut by window for release as
the watermark passes (``results.ResultCollector``), which needs the elements.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Union

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec
from apache_beam.runners.portability.fn_api_runner import translations


class ArrivingGroups(beam_exec.GroupingBuffer):
    """One attempt's output for one GroupByKey, grouped on ``append``.

    Iterating it is refused (Beam's ``GroupingBuffer`` would freeze it into
    encoded groups): the consumer's buffer takes it with ``extend``.
    """

    def __init__(self, pre_grouped_coder: Any, post_grouped_coder: Any,
                 windowing: Any) -> None:
        super().__init__(pre_grouped_coder, post_grouped_coder, windowing)
        self.chunks = 0

    def append(self, elements_data: bytes) -> None:
        if elements_data:
            super().append(elements_data)
            self.chunks += 1

    def merge(self, other: "ArrivingGroups") -> None:
        """Take ``other``'s groups (the parts of one bundle run on several workers)."""
        self.extend(other)
        self.chunks += other.chunks

    def empty_like(self) -> "ArrivingGroups":
        return ArrivingGroups(self._pre_grouped_coder, self._post_grouped_coder,
                              self._windowing)

    def __iter__(self) -> Iterator[bytes]:
        raise TypeError(
            "ArrivingGroups holds grouped GroupByKey input; a consumer's "
            "GroupingBuffer takes it with extend(), it is not read as chunks")


GroupsFactory = Callable[[], ArrivingGroups]

#: What an attempt collects for one data output.
OutputBuffer = Union[beam_exec.ListBuffer, ArrivingGroups]


def released_by_window(strategy: beam_runner_api_pb2.WindowingStrategy) -> bool:
    """Whether a batch GroupByKey's input is cut by window (non-merging,
    non-global windows), rather than going to its consumer whole."""
    return (strategy.merge_status == beam_runner_api_pb2.MergeStatus.NON_MERGING
            and strategy.window_fn.urn != common_urns.global_windows.urn)


def groups_factory(context: beam_exec.FnApiRunnerExecutionContext,
                   buffer_id: bytes) -> Optional[GroupsFactory]:
    """How to build ``ArrivingGroups`` for ``group:<GroupByKey>``, with the
    coders and windowing Beam's ``BundleContextManager.get_buffer`` would
    use; None when that GroupByKey's input is cut by window."""
    _, gbk_id = translations.split_buffer_id(buffer_id)
    components = context.pipeline_components
    transform = components.transforms[gbk_id]
    [input_pcoll] = list(transform.inputs.values())
    [output_pcoll] = list(transform.outputs.values())
    strategy_id = components.pcollections[input_pcoll].windowing_strategy_id
    if released_by_window(components.windowing_strategies[strategy_id]):
        return None

    def coder(pcoll: str) -> Any:
        return context.pipeline_context.coders[
            context.safe_coders[context.data_channel_coders[pcoll]]]

    pre, post = coder(input_pcoll), coder(output_pcoll)
    windowing = context.pipeline_context.windowing_strategies[
        context.safe_windowing_strategies[strategy_id]]
    return lambda: ArrivingGroups(pre, post, windowing)
