"""Merge the monitoring infos of many bundles (or bundle parts) of a stage.

Beam's ``consolidate`` merges counters and distributions only; infos of other
types stay side by side, and Beam's ``FnApiMetrics`` then keeps the last one
it reads. That is right for FnApiRunner's one bundle per stage, not for a
runner whose stage runs many bundles: a string set would hold one bundle's
strings. Here string sets are united, bounded tries combined and gauges keep
the latest value, as Beam's metric cells combine them.
"""
from __future__ import annotations

from functools import reduce
from typing import Iterable, Iterator

from apache_beam.coders import coders
from apache_beam.metrics import monitoring_infos as mi
from apache_beam.metrics.cells import BoundedTrieData
from apache_beam.portability.api import metrics_pb2

from beam_gpu_runner.bridge.beam import decode_gauge

_STRINGS = coders.IterableCoder(coders.StrUtf8Coder())


def _union_strings(a: bytes, b: bytes) -> bytes:
    return _STRINGS.encode(sorted(set(_STRINGS.decode(a)) | set(_STRINGS.decode(b))))


def _combine_tries(a: bytes, b: bytes) -> bytes:
    merged = BoundedTrieData.from_proto(metrics_pb2.BoundedTrie.FromString(a)).combine(
        BoundedTrieData.from_proto(metrics_pb2.BoundedTrie.FromString(b)))
    return merged.to_proto().SerializeToString()


def _latest_gauge(a: bytes, b: bytes) -> bytes:
    (ta, _), (tb, _) = (decode_gauge(coders.VarIntCoder(), p) for p in (a, b))
    return b if tb >= ta else a


_COMBINERS = {
    mi.STRING_SET_TYPE: _union_strings,
    mi.BOUNDED_TRIE_TYPE: _combine_tries,
    mi.LATEST_INT64_TYPE: _latest_gauge,
}


def consolidate(infos: Iterable[metrics_pb2.MonitoringInfo]
                ) -> Iterator[metrics_pb2.MonitoringInfo]:
    """Beam's consolidate, plus string sets, bounded tries and gauges."""
    grouped: dict[object, list[metrics_pb2.MonitoringInfo]] = {}
    rest = []
    for info in infos:
        if info.type in _COMBINERS:
            grouped.setdefault(mi.to_key(info), []).append(info)
        else:
            rest.append(info)
    yield from mi.consolidate(rest)
    for values in grouped.values():
        combine = _COMBINERS[values[0].type]
        yield reduce(lambda a, b: metrics_pb2.MonitoringInfo(
            urn=a.urn, type=a.type, labels=dict(a.labels),
            payload=combine(a.payload, b.payload)), values)
