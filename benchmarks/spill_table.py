"""Microbenchmark of ``bridge/spill.py``: add and read throughput, in MB/s
of key+value bytes, with and without spilling, against a plain dict grouping
of the same data in the same run.

Two shapes: many small values (100 B, 10,000 keys: per-record Python cost
dominates) and large values (64 KiB, 10 keys: bytes dominate). "Spilling"
runs use a budget of 1/8 of the data, so most of it goes to disk and comes
back (the page cache usually keeps it: this is CPU cost, not disk speed).
"""
from __future__ import annotations

import random
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from beam_gpu_runner.bridge.spill import MemoryBudget, SpillFolder, SpillingGroupTable


@dataclass(frozen=True)
class SpillCase:
    shape: str               # small-values | large-values
    table: str               # dict | table-in-memory | table-spilling
    data_bytes: int          # key + value bytes added
    values: int
    budget_bytes: int        # 0 for the dict
    add_mb_per_s: float
    read_mb_per_s: float
    runs: int                # spill runs written
    spilled_bytes: int
    budget_peak_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _data(value_bytes: int, num_keys: int, total_bytes: int,
          seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Pairs whose values are distinct objects (sliced from one random buffer)."""
    rng = random.Random(seed)
    count = max(1, total_bytes // value_bytes)
    pool = rng.randbytes(value_bytes * 64)
    keys = [b"key-%08d" % i for i in range(num_keys)]
    pairs = []
    for i in range(count):
        at = (i % 64) * value_bytes
        pairs.append((keys[rng.randrange(num_keys)], pool[at:at + value_bytes]))
    return pairs


def _measure(shape: str, pairs: list[tuple[bytes, bytes]], budget_bytes: Optional[int],
             folder: str) -> SpillCase:
    data_bytes = sum(len(k) + len(v) for k, v in pairs)
    value_bytes = sum(len(v) for _, v in pairs)
    if budget_bytes is None:
        t0 = time.perf_counter()
        groups: dict[bytes, list[bytes]] = {}
        for key, value in pairs:
            values = groups.get(key)
            if values is None:
                groups[key] = [value]
            else:
                values.append(value)
        t1 = time.perf_counter()
        read = 0
        for key in sorted(groups):
            read += sum(map(len, groups[key]))
        t2 = time.perf_counter()
        assert read == value_bytes
        return SpillCase(shape, "dict", data_bytes, len(pairs), 0,
                         data_bytes / (t1 - t0) / 1e6, data_bytes / (t2 - t1) / 1e6, 0, 0, 0)
    budget = MemoryBudget(budget_bytes)
    with SpillFolder(folder) as spill_folder:
        table = SpillingGroupTable(budget, spill_folder)
        add = table.add
        t0 = time.perf_counter()
        for key, value in pairs:
            add(key, value)
        t1 = time.perf_counter()
        read = 0
        for key, values in table.groups():
            read += sum(map(len, values))
        t2 = time.perf_counter()
        stats = table.stats()
        table.close()
    if read != value_bytes:
        raise RuntimeError("spill microbenchmark %s: read %d value bytes back, added %d"
                           % (shape, read, value_bytes))
    return SpillCase(shape, "table-spilling" if stats.runs else "table-in-memory", data_bytes,
                     len(pairs), budget_bytes, data_bytes / (t1 - t0) / 1e6,
                     data_bytes / (t2 - t1) / 1e6, stats.runs, stats.spilled_bytes,
                     budget.peak)


def run(total_bytes: int, folder: Optional[str] = None) -> list[SpillCase]:
    """Every shape x (dict, table in memory, table spilling ~7/8 of the data)."""
    parent = folder or tempfile.gettempdir()
    cases = []
    for shape, value_bytes, num_keys in (("small-values", 100, 10_000),
                                         ("large-values", 64 << 10, 10)):
        pairs = _data(value_bytes, num_keys, total_bytes)
        cases.append(_measure(shape, pairs, None, parent))
        cases.append(_measure(shape, pairs, 1 << 40, parent))
        cases.append(_measure(shape, pairs, max(total_bytes // 8, 1 << 16), parent))
    return cases
