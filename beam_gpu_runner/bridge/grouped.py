"""A batch GroupByKey's input, grouped by key on the driver.

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
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from apache_beam.coders.coder_impl import create_InputStream
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.utils.windowed_value import WindowedValue

from beam_gpu_runner.bridge.beam import beam_execution
from beam_gpu_runner.engine.sizing import even_chunks


class Groups(beam_execution.GroupingBuffer):
    """Grouped GroupByKey input; see the module docstring."""

    def __init__(self, pre_grouped_coder: Any, post_grouped_coder: Any,
                 windowing: Any) -> None:
        super().__init__(pre_grouped_coder, post_grouped_coder, windowing)
        #: Data messages grouped (0: nothing arrived)
        self.messages = 0
        #: the grouped elements once encoded for a consumer (kept for retries)
        self._encoded: Optional[list[bytes]] = None
        self._encoded_keys = 0

    def append(self, elements_data: bytes) -> None:
        if elements_data:
            super().append(elements_data)
            self.messages += 1

    @property
    def keys(self) -> int:
        return self._encoded_keys if self._encoded is not None else len(self._table)

    def empty_like(self) -> "Groups":
        return Groups(self._pre_grouped_coder, self._post_grouped_coder, self._windowing)

    @classmethod
    def merged(cls, parts: Sequence["Groups"]) -> "Groups":
        """One buffer with every part's groups (values of a key in part order)."""
        if len(parts) == 1:
            return parts[0]
        out = parts[0].empty_like()
        for part in parts:
            out.extend(part)
            out.messages += part.messages
        return out

    def divide(self, parts: int) -> list["Groups"]:
        """Up to ``parts`` buffers with disjoint keys, in key order of arrival."""
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

    def encoded(self) -> list[bytes]:
        """The grouped elements, encoded for the consumer's data input (once:
        Beam's encoding empties the table; a retry sends the same bytes)."""
        if self._encoded is None:
            self._encoded_keys = len(self._table)
            self._encoded = [chunk for part in self.partition(1) for chunk in part]
        return self._encoded

    def has_data(self) -> bool:
        return self.keys > 0


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
            wkv = pre_coder_impl.decode_from_stream(stream, True)
            key, value = wkv.value
            encoded_key = key_impl.encode(key)
            for window in wkv.windows:
                end = int(window.max_timestamp().micros)
                groups = out.get(end)
                if groups is None:
                    groups = out[end] = template.empty_like()
                    groups.messages = 1
                groups._table[encoded_key].append(
                    WindowedValue(value, wkv.timestamp, (window,), wkv.pane_info))
    return out


__all__ = ["Groups", "by_window", "released_by_window"]
