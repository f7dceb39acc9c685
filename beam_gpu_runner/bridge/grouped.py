"""A batch GroupByKey's input, grouped by key on the driver, within a budget.

``Groups`` is Beam's ``GroupingBuffer`` (same coders, windowing and encoded
output, so the consumer's SDK reads exactly what FnApiRunner would send) that
also serves as an engine payload:

* each attempt of a producer collects its GroupByKey output in its own
  ``Groups``, grouping every Data message as it arrives, on the attempt's
  thread, while the producers still run (workers send ~1 MB messages,
  ``bridge.harness``); a failed attempt's groups are dropped with it;
* the consumer's bundle merges its producers' groups (``merged``) and may be
  cut by key for idle workers (``divide``), since the output of a stateless
  stage depends on each group alone;
* inputs of non-merging, non-global windows are grouped per window end
  (``by_window``), so each window is released as the watermark passes it.

Memory: every ``Groups`` of a job draws from the job's ``GroupingMemory``
(``--shuffle_memory_budget``). A ``Groups`` that cannot reserve what a new
message costs writes its groups, encoded, to a ``bridge.spill`` table on local
disk (``--spill_dir``) and frees them; groups that spilled are read back one
partition at a time when the consumer's input is sent, never all at once, so
the driver holds about the budget whatever the shuffle's size.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from apache_beam.coders import coders
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.transforms import trigger
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import windowed_value
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.bridge.beam import beam_execution
from beam_gpu_runner.bridge.spill import (
    KEY_OVERHEAD, VALUE_OVERHEAD, MemoryBudget, SpillFolder, SpillingGroupTable)
from beam_gpu_runner.engine.sizing import even_chunks

_LOG = logging.getLogger(__name__)

#: Grouped output is sent in pieces of about this size (read from spill files).
_PIECE_BYTES = 1 << 20


class GroupingMemory:
    """A job's budget for grouped data on the driver, and where it spills."""

    def __init__(self, limit_bytes: int, spill_dir: Optional[str] = None) -> None:
        self.budget = MemoryBudget(limit_bytes)
        self.folder = SpillFolder(spill_dir)

    def close(self) -> None:
        """Remove the job's spill files (at the job's end)."""
        self.folder.close()


def _release(budget: MemoryBudget, reserved: list[int]) -> None:
    if reserved[0]:
        budget.release(reserved[0])
        reserved[0] = 0


class Groups(beam_execution.GroupingBuffer):
    """Grouped GroupByKey input; see the module docstring."""

    def __init__(self, pre_grouped_coder: Any, post_grouped_coder: Any,
                 windowing: Any, memory: Optional[GroupingMemory] = None) -> None:
        super().__init__(pre_grouped_coder, post_grouped_coder, windowing)
        #: Data messages grouped (0: nothing arrived)
        self.messages = 0
        #: the grouped elements once encoded for a consumer (kept for retries)
        self._encoded: Optional[list[bytes]] = None
        self._encoded_keys = 0
        self._memory = memory
        #: budget bytes this buffer holds (a list: its finalizer releases it)
        self._reserved = [0]
        if memory is not None:
            weakref.finalize(self, _release, memory.budget, self._reserved)
        #: groups written to disk
        self._spilled: Optional[SpillingGroupTable] = None

    # ---- filling ------------------------------------------------------------------

    def append(self, elements_data: bytes) -> None:
        """Group one Data message (Beam's GroupingBuffer.append, accounted)."""
        if not elements_data:
            return
        stream = create_InputStream(elements_data)
        coder_impl = self._pre_grouped_coder.get_impl()
        key_impl = self._key_coder.get_impl()
        trivial = self._windowing.is_default()
        new_keys = values = 0
        while stream.size() > 0:
            windowed_key_value = coder_impl.decode_from_stream(stream, True)
            key, value = windowed_key_value.value
            encoded_key = key_impl.encode(key)
            group = self._table.get(encoded_key)
            if group is None:
                group = self._table[encoded_key] = []
                new_keys += 1
            group.append(value if trivial else windowed_key_value.with_value(value))
            values += 1
        self.messages += 1
        self._account(len(elements_data) + VALUE_OVERHEAD * values
                      + KEY_OVERHEAD * new_keys)

    def add(self, encoded_key: bytes, value: Any, cost: int) -> None:
        """One value (already decoded) for ``encoded_key``; ``cost``: its bytes."""
        self._table[encoded_key].append(value)
        self._account(cost + VALUE_OVERHEAD)

    def _account(self, cost: int) -> None:
        memory = self._memory
        if memory is None:
            return
        if memory.budget.try_reserve(cost):
            self._reserved[0] += cost
            return
        self._spill()

    def _spill(self) -> None:
        """Write the groups held in memory to disk and free them."""
        assert self._memory is not None
        table = self._table_for_spill()
        value_impl = self._value_impl()
        for key, group in self._table.items():
            table.add_values(key, [value_impl.encode(v) for v in group])
        table.spill()
        self._table.clear()
        _release(self._memory.budget, self._reserved)
        _LOG.debug("Grouped data beyond --shuffle_memory_budget (%d bytes) went to %s",
                   self._memory.budget.limit, self._memory.folder.created)

    def _table_for_spill(self) -> SpillingGroupTable:
        assert self._memory is not None
        if self._spilled is None:
            self._spilled = SpillingGroupTable(self._memory.budget, self._memory.folder)
        return self._spilled

    def _value_impl(self) -> Any:
        """Encodes a group's values as they are held (windowed unless trivial)."""
        pre: Any = self._pre_grouped_coder   # a WindowedValueCoder of KVs
        value_coder = pre.wrapped_value_coder.value_coder()
        if self._windowing.is_default():
            return value_coder.get_impl()
        return coders.WindowedValueCoder(value_coder, pre.window_coder).get_impl()

    # ---- what the engine sees -------------------------------------------------------

    @property
    def keys(self) -> int:
        """Groups held (an upper bound, the values, once some spilled)."""
        if self._encoded is not None:
            return self._encoded_keys
        spilled = self._spilled.stats().values if self._spilled is not None else 0
        return len(self._table) + spilled

    def has_data(self) -> bool:
        return self.keys > 0

    @property
    def spilled(self) -> bool:
        return self._spilled is not None

    def empty_like(self) -> "Groups":
        return Groups(self._pre_grouped_coder, self._post_grouped_coder, self._windowing,
                      self._memory)

    @classmethod
    def merged(cls, parts: Sequence["Groups"]) -> "Groups":
        """One buffer with every part's groups (values of a key in part order);
        the parts' memory and spill files move to it."""
        if len(parts) == 1:
            return parts[0]
        out = parts[0].empty_like()
        if any(p.spilled for p in parts):
            table = out._table_for_spill()
            for part in parts:
                if part._spilled is not None:
                    table.merge(part._spilled)
                value_impl = part._value_impl()
                for key, group in part._table.items():
                    table.add_values(key, [value_impl.encode(v) for v in group])
                part._table.clear()
                if part._memory is not None:
                    _release(part._memory.budget, part._reserved)
        else:
            for part in parts:
                out.extend(part)
                out._reserved[0] += part._reserved[0]
                part._reserved[0] = 0
        out.messages = sum(p.messages for p in parts)
        return out

    def divide(self, parts: int) -> list["Groups"]:
        """Up to ``parts`` buffers with disjoint keys, in key order of arrival.
        Groups that spilled are not divided: read back by one bundle, one
        partition at a time, they hold about the budget; read by several at
        once, each holds its own partition and the copies a big group costs on
        its way to the worker (measured: a 1 GB GroupByKey of 105 MB groups
        peaked at 1.0 GB read by one bundle, 2.7-3.0 GB by four)."""
        if self._spilled is not None:
            return [self]
        keys = list(self._table)
        if parts <= 1 or len(keys) <= 1 or self._encoded is not None:
            return [self]
        out = []
        for run in even_chunks(keys, parts):
            piece = self.empty_like()
            for key in run:
                piece._table[key] = self._table[key]
            piece.messages = 1
            out.append(piece)
        return out

    def encoded(self) -> Iterable[bytes]:
        """The grouped elements, encoded for the consumer's data input: once
        (Beam's encoding empties the table; a retry sends the same bytes), or,
        when groups spilled, read back from disk piece by piece each time."""
        if self._spilled is not None:
            return _SpilledEncoding(self)
        if self._encoded is None:
            self._encoded_keys = len(self._table)
            self._encoded = [chunk for part in self.partition(1) for chunk in part]
            if self._memory is not None:
                _release(self._memory.budget, self._reserved)
        return self._encoded


class _SpilledEncoding:
    """Groups that spilled, encoded as the consumer reads them: a re-iterable
    of ~1 MB pieces, reading one spill partition at a time."""

    def __init__(self, groups: Groups) -> None:
        self._groups = groups

    def __iter__(self) -> Iterator[bytes]:
        groups = self._groups
        table = groups._spilled
        assert table is not None
        if groups._table:   # what arrived after the last spill
            value_impl = groups._value_impl()
            for key, group in groups._table.items():
                table.add_values(key, [value_impl.encode(v) for v in group])
            groups._table.clear()
        # All of it to disk first: reading then has the budget to itself
        # (a quarter of it per partition), whatever the producers left in memory.
        table.spill()
        key_impl = groups._key_coder.get_impl()
        value_impl = groups._value_impl()
        out_impl = groups._post_grouped_coder.get_impl()
        windowed = _windowing_of(groups._windowing)
        out = create_OutputStream()
        for key, values in table.groups():
            elements = windowed(key_impl.decode(key), [value_impl.decode(v) for v in values])
            del values   # a big group is held once: its encoded values go first...
            for element in elements:
                out_impl.encode_to_stream(element, out, True)
            del elements   # ... then its decoded ones
            if out.size() >= _PIECE_BYTES:
                piece, out = out.get(), create_OutputStream()
                yield piece   # nothing else of the group is held while it is sent
                del piece
        if out.size():
            yield out.get()


def _windowing_of(windowing: Any) -> Any:
    """(key, values) -> the grouped elements, as Beam's GroupingBuffer makes them."""
    if windowing.is_default():
        on_time = GlobalWindows.windowed_value(
            None, timestamp=GlobalWindow().max_timestamp(),
            pane_info=windowed_value.PaneInfo(
                is_first=True, is_last=True, timing=windowed_value.PaneInfoTiming.ON_TIME,
                index=0, nonspeculative_index=0)).with_value
        return lambda key, values: [on_time((key, values))]
    return trigger.create_trigger_driver(windowing, True).process_entire_key


def released_by_window(strategy: beam_runner_api_pb2.WindowingStrategy) -> bool:
    """Whether a batch GroupByKey's input is released window by window
    (non-merging, non-global windows) rather than whole at the end."""
    return (strategy.merge_status == beam_runner_api_pb2.MergeStatus.NON_MERGING
            and strategy.window_fn.urn != common_urns.global_windows.urn)


def by_window(chunks: Iterable[bytes], pre_coder_impl: Any, template: Groups
              ) -> dict[int, Groups]:
    """Chunks of windowed KVs grouped per window end (microseconds): one
    decode of each element, no re-encoding."""
    out: dict[int, Groups] = {}
    key_impl = template._key_coder.get_impl()
    for chunk in chunks:
        stream = create_InputStream(chunk)
        while stream.size() > 0:
            start = stream.size()
            wkv = pre_coder_impl.decode_from_stream(stream, True)
            cost = start - stream.size()
            key, value = wkv.value
            encoded_key = key_impl.encode(key)
            for window in wkv.windows:
                end = int(window.max_timestamp().micros)
                groups = out.get(end)
                if groups is None:
                    groups = out[end] = template.empty_like()
                    groups.messages = 1
                groups.add(encoded_key,
                           WindowedValue(value, wkv.timestamp, (window,), wkv.pane_info),
                           cost)
    return out


Encoded = Union[list[bytes], _SpilledEncoding]

__all__ = ["GroupingMemory", "Groups", "by_window", "released_by_window"]
