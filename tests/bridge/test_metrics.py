"""Merging monitoring infos of many bundles of one stage (execution/metrics.py)."""
from __future__ import annotations

from apache_beam.metrics import monitoring_infos as mi
from apache_beam.metrics.cells import BoundedTrieData, GaugeData, StringSetData

from beam_gpu_runner.bridge.metrics import consolidate


def _only(infos):
    (info,) = list(infos)
    return info


def test_counters_add_and_string_sets_unite():
    infos = [mi.int64_user_counter("ns", "c", 2, ptransform="t"),
             mi.int64_user_counter("ns", "c", 3, ptransform="t"),
             mi.user_set_string("ns", "s", StringSetData({"a"}), ptransform="t"),
             mi.user_set_string("ns", "s", StringSetData({"zzz", "a"}), ptransform="t")]
    merged = list(consolidate(infos))
    counter = _only(i for i in merged if mi.is_counter(i))
    strings = _only(i for i in merged if mi.is_string_set(i))
    assert mi.extract_counter_value(counter) == 5
    assert mi.extract_string_set_value(strings) == {"a", "zzz"}


def test_bounded_tries_combine_and_gauges_keep_the_latest():
    a, b = BoundedTrieData(), BoundedTrieData()
    a.add(("a",))
    b.add(("z", "z"))
    infos = [mi.user_bounded_trie("ns", "t", a, ptransform="t"),
             mi.user_bounded_trie("ns", "t", b, ptransform="t"),
             mi.int64_user_gauge("ns", "g", GaugeData(7, timestamp=2000.0), ptransform="t"),
             mi.int64_user_gauge("ns", "g", GaugeData(3, timestamp=1000.0), ptransform="t")]
    merged = list(consolidate(infos))
    trie = mi.extract_bounded_trie_value(_only(i for i in merged if mi.is_bounded_trie(i)))
    assert trie.get_result() == {("a", False), ("z", "z", False)}
    gauge = _only(i for i in merged if mi.is_gauge(i))
    assert mi.extract_gauge_value(gauge)[1] == 7


def test_different_transforms_stay_apart():
    infos = [mi.user_set_string("ns", "s", StringSetData({"a"}), ptransform="t1"),
             mi.user_set_string("ns", "s", StringSetData({"b"}), ptransform="t2")]
    assert len(list(consolidate(infos))) == 2
