"""Grouping by key that spills to local disk under a memory budget.

A batch GroupByKey's input is grouped on the driver. Held in a dict it costs
the data several times over (a 1 GB GroupByKey peaked at 6.4 GB driver RSS);
this module bounds what the driver holds, as Flink, Spark and Dataflow's
shuffle do, by writing grouped data to disk beyond a budget. Pure Python: no
Beam and no other runner module; keys and values are encoded ``bytes``.

* ``MemoryBudget(limit_bytes)``: one per job, shared by all its tables,
  thread-safe. Tables reserve from it in chunks (``RESERVE_CHUNK``) and
  release what they spill.
* ``SpillFolder(parent)``: the job's spill folder
  (``<parent>/beam-gpu-runner-spill-<pid>-XXXX``), made on the first spill,
  removed by ``close()``, when collected, or at normal interpreter exit.
* ``SpillingGroupTable(budget, folder)``: ``add(key, value)``,
  ``add_values(key, values)``, ``merge(other)``, ``groups()``,
  ``groups_in_parts(n)``, ``close()``. One producer per table (a table is not
  thread-safe); tables filled on several threads are merged on one.

What a table holds in memory is accounted as ``len(key) + KEY_OVERHEAD`` per
key and ``len(value) + VALUE_OVERHEAD`` per value. The overheads were measured
with ``tracemalloc`` on CPython 3.11 (values sliced from a buffer, as a
decoder makes them, into ``dict[bytes, list[bytes]]``): ~41.6 bytes per
value (the ``bytes`` header, 33, plus a list slot and its growth) whatever
its size, ~160-182 bytes per key with its first value (the key object, the
list, the dict entry); rounded up to 48 and 144.

When a reservation fails, the table writes all it holds in memory to its
spill file as one *run*, releases its reservation and gives the freed memory
back to the operating system (``give_back_freed_memory``: glibc keeps freed
~1 MB blocks in its arenas, so without it the driver's resident set stayed
0.3-0.6 GB above what it held: the 1 GB GroupByKey peaked at 1.43-1.71 GB
with the default budget, 1.09-1.13 GB with it, same wall time). A run is append-only:
records ``[key length, value count][value lengths][key][values]``
(native-endian 32-bit lengths; the files never leave this process), sorted by
``(crc32(key), key)``, with a small index of where each of ``NUM_BUCKETS``
hash buckets (the top bits of the crc32) starts. A table is a sequence of
segments, runs and in-memory dicts, in insertion order; ``merge`` appends the
other table's segments (file references, never their bytes), so values of a
key come out in the order they were added: spilled ones first, in the order
they were written, then the ones still in memory.

Reading plans contiguous bucket ranges whose spilled part is estimated at no
more than ``read_partition_bytes`` in memory (default a quarter of the
budget; the count thus follows from the spilled size and the budget), and
reads one range at a time from every run, so reading holds the table's
in-memory groups (within the budget) plus about one partition. Keys come out
in ``(crc32(key), key)`` order whatever was spilled and when, so the order is
deterministic. A single key's values are held together: one key larger than
the memory there is cannot be read back (nor could it be grouped without the
table).
"""
from __future__ import annotations

import array
import bisect
import ctypes
import ctypes.util
import itertools
import logging
import os
import shutil
import struct
import tempfile
import threading
import weakref
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional, Sequence, Union

_LOG = logging.getLogger(__name__)

#: Accounted bytes per value on top of its length (measured, see the module doc).
VALUE_OVERHEAD = 48
#: Accounted bytes per key on top of its length (measured, see the module doc).
KEY_OVERHEAD = 144
#: Hash buckets of a run's index: the top BUCKET_BITS bits of crc32(key).
BUCKET_BITS = 12
NUM_BUCKETS = 1 << BUCKET_BITS
_SHIFT = 32 - BUCKET_BITS
#: A table reserves from the budget in chunks of this size (at most 1/16 of it).
RESERVE_CHUNK = 1 << 20
#: Smallest planned read partition.
MIN_READ_PARTITION = 64 << 10
#: Records whose values total at most this are read with one read() and sliced.
_SLICE_LIMIT = 1 << 20
#: Spill writes go to the file in batches of about this many bytes.
_WRITE_BATCH = 1 << 20
#: A run's byte range up to this size is read with one read() and parsed.
_BLOB_LIMIT = 4 << 20

SPILL_PREFIX = "beam-gpu-runner-spill-"
#: The options the lead's runner exposes; named in error messages.
BUDGET_OPTION = "--shuffle_memory_budget"
SPILL_DIR_OPTION = "--spill_dir"

_HEADER = struct.Struct("=II")   # key length, value count
_LENGTH_CODE = "I"   # 4-byte unsigned on every platform CPython supports
assert array.array(_LENGTH_CODE).itemsize == 4

Group = tuple[bytes, list[bytes]]


def _find_malloc_trim() -> Optional[Callable[[int], int]]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)   # glibc only
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_MALLOC_TRIM = _find_malloc_trim()


def give_back_freed_memory() -> bool:
    """Return the C allocator's free memory to the operating system (glibc's
    ``malloc_trim(0)``); False where there is none to call (not glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class SpillError(RuntimeError):
    """Writing or reading spilled grouped data failed.

    Args-only constructor, so it pickles across processes.
    """

    def __init__(self, operation: str, folder: str, nbytes: int, reason: str) -> None:
        super().__init__(operation, folder, nbytes, reason)
        self.operation = operation
        self.folder = folder
        self.nbytes = nbytes
        self.reason = reason

    def __str__(self) -> str:
        return ("%s: %d bytes of grouped data in %s: %s; free space there or point %s at a "
                "writable folder with room, or raise %s so that less is spilled"
                % (self.operation, self.nbytes, self.folder, self.reason, SPILL_DIR_OPTION,
                   BUDGET_OPTION))


class MemoryBudget:
    """Bytes the grouping tables of one job may hold in memory, together.

    Thread-safe. ``try_reserve`` never waits: a table that cannot reserve
    spills what it holds instead.
    """

    def __init__(self, limit_bytes: int) -> None:
        if not isinstance(limit_bytes, int) or limit_bytes < 1:
            raise ValueError("MemoryBudget: limit_bytes must be a whole number of bytes >= 1, "
                             "got %r; set %s to e.g. 268435456 (256 MiB)"
                             % (limit_bytes, BUDGET_OPTION))
        self._limit = limit_bytes
        self._used = 0
        self._peak = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "MemoryBudget(limit_bytes=%d, used=%d)" % (self._limit, self._used)

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    @property
    def peak(self) -> int:
        """The most ever reserved at once."""
        return self._peak

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` if they fit under the limit; False (nothing reserved) if not."""
        if nbytes < 0:
            raise ValueError("MemoryBudget.try_reserve: nbytes must be >= 0, got %d" % nbytes)
        with self._lock:
            if self._used + nbytes > self._limit:
                return False
            self._used += nbytes
            if self._used > self._peak:
                self._peak = self._used
            return True

    def release(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError("MemoryBudget.release: nbytes must be >= 0, got %d" % nbytes)
        with self._lock:
            if nbytes > self._used:
                raise ValueError("MemoryBudget.release: releasing %d bytes but only %d are "
                                 "reserved (a table released twice?)" % (nbytes, self._used))
            self._used -= nbytes


class SpillFolder:
    """Where one job's tables spill: a fresh folder under ``parent`` (the
    system temp folder when None), made on first use and removed with all its
    files by ``close()``, when collected, or at normal interpreter exit."""

    def __init__(self, parent: Optional[str] = None) -> None:
        self._parent = parent
        self._path: Optional[str] = None
        self._lock = threading.Lock()
        self._finalizer: Optional[weakref.finalize] = None

    def __repr__(self) -> str:
        return "SpillFolder(%r)" % (self._path or self.parent)

    @property
    def parent(self) -> str:
        return self._parent if self._parent is not None else tempfile.gettempdir()

    @property
    def created(self) -> Optional[str]:
        """The folder, once made (None before the first spill or after close)."""
        return self._path

    def path(self, nbytes: int = 0) -> str:
        """The folder, made now if need be (``nbytes``: what is about to be
        written, for the error message)."""
        with self._lock:
            if self._path is None:
                try:
                    self._path = tempfile.mkdtemp(prefix="%s%d-" % (SPILL_PREFIX, os.getpid()),
                                                  dir=self._parent)
                except OSError as exc:
                    raise SpillError("making a spill folder", self.parent, nbytes,
                                     str(exc)) from exc
                self._finalizer = weakref.finalize(self, _remove_folder, self._path,
                                                   os.getpid())
                _LOG.info("spill: grouped data beyond the memory budget goes to %s",
                          self._path)
            return self._path

    def new_file(self, nbytes: int) -> tuple[str, BinaryIO]:
        """A new empty file in the folder, open for appending."""
        folder = self.path(nbytes)
        try:
            fd, name = tempfile.mkstemp(prefix="table-", suffix=".spill", dir=folder)
            return name, os.fdopen(fd, "ab")
        except OSError as exc:
            raise SpillError("creating a spill file", folder, nbytes, str(exc)) from exc

    def close(self) -> None:
        """Remove the folder and every file in it (tables in it can no longer be read)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._finalizer = None
            self._path = None

    def __enter__(self) -> "SpillFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove_folder(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:   # not in a forked child that exits normally
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_spill_folders(parent: Optional[str] = None) -> list[str]:
    """Remove spill folders under ``parent`` left by processes that no longer
    run (killed before they could clean up); returns the folders removed."""
    parent = parent if parent is not None else tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SPILL_PREFIX):
            continue
        pid_text = name[len(SPILL_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        path = os.path.join(parent, name)
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
            _LOG.info("spill: removed %s, left by process %s which no longer runs", path,
                      pid_text)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # exists, owned by someone else
    return True


def _estimate(file_bytes: int, records: int, values: int) -> int:
    """Accounted memory of groups that take ``file_bytes`` in a run: the
    records' headers and lengths (8 + 4 per value) give way to the overheads."""
    return (file_bytes + records * (KEY_OVERHEAD - _HEADER.size)
            + values * (VALUE_OVERHEAD - 4))


def _order(key: bytes) -> tuple[int, bytes]:
    return zlib.crc32(key), key


@dataclass
class _Run:
    """One spill of a table's in-memory groups: ``[start, end)`` of ``path``."""

    path: str
    start: int
    end: int
    buckets: array.array = field(default_factory=lambda: array.array("H"))
    offsets: array.array = field(default_factory=lambda: array.array("Q"))
    estimates: array.array = field(default_factory=lambda: array.array("Q"))

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Byte range of the records of buckets ``[lo, hi)``."""
        i = bisect.bisect_left(self.buckets, lo)
        j = bisect.bisect_left(self.buckets, hi)
        start = self.offsets[i] if i < len(self.offsets) else self.end
        end = self.offsets[j] if j < len(self.offsets) else self.end
        return start, end


class _Memory:
    """An in-memory segment; ``view()`` sorts it for reading by bucket range."""

    def __init__(self) -> None:
        self.groups: dict[bytes, list[bytes]] = {}
        self._sorted: Optional[list[bytes]] = None
        self._buckets: Optional[list[int]] = None

    def invalidate(self) -> None:
        self._sorted = self._buckets = None

    def view(self) -> tuple[list[bytes], list[int]]:
        if self._sorted is None or self._buckets is None:
            self._sorted = sorted(self.groups, key=_order)
            self._buckets = [zlib.crc32(k) >> _SHIFT for k in self._sorted]
        return self._sorted, self._buckets

    def keys_in(self, lo: int, hi: int) -> list[bytes]:
        keys, buckets = self.view()
        return keys[bisect.bisect_left(buckets, lo):bisect.bisect_left(buckets, hi)]

    def add_estimates(self, into: list[int]) -> None:
        keys, buckets = self.view()
        groups = self.groups
        for key, bucket in zip(keys, buckets):
            values = groups[key]
            into[bucket] += (sum(map(len, values)) + len(values) * VALUE_OVERHEAD
                             + len(key) + KEY_OVERHEAD)


Segment = Union[_Run, _Memory]


class _State:
    """What the finalizer of a table needs (it must not reference the table)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.reserved = 0
        self.paths: list[str] = []
        self.writer: Optional[BinaryIO] = None
        self.writer_path: Optional[str] = None
        self.pid = os.getpid()


def _release(state: _State) -> None:
    if os.getpid() != state.pid:
        return   # a forked child exiting normally: the files are its parent's
    if state.writer is not None:
        try:
            state.writer.close()
        except OSError:
            pass
        state.writer = None
        state.writer_path = None
    for path in state.paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _LOG.warning("spill: could not remove %s: %s", path, exc)
    state.paths.clear()
    if state.reserved:
        state.budget.release(state.reserved)
        state.reserved = 0


@dataclass(frozen=True)
class TableStats:
    values: int            # values added (merged tables' included)
    memory_bytes: int      # accounted bytes held in memory
    spilled_bytes: int     # bytes written to spill files
    runs: int              # spill runs (each a write of in-memory groups)


class SpillingGroupTable:
    """Groups of encoded values by encoded key, spilling to disk beyond the
    budget. See the module doc for the layout and guarantees."""

    def __init__(self, budget: MemoryBudget, folder: SpillFolder,
                 read_partition_bytes: Optional[int] = None) -> None:
        self._budget = budget
        self._folder = folder
        self._read_partition_bytes = (read_partition_bytes if read_partition_bytes
                                      else max(budget.limit // 4, MIN_READ_PARTITION))
        self._chunk = max(1, min(RESERVE_CHUNK, budget.limit // 16))
        self._segments: list[Segment] = []
        self._active: Optional[_Memory] = None
        self._used = 0
        self._values = 0
        self._spilled_bytes = 0
        self._runs = 0
        self._closed = False
        self._state = _State(budget)
        self._finalizer = weakref.finalize(self, _release, self._state)

    def __repr__(self) -> str:
        return "SpillingGroupTable(%s)" % (self.stats(),)

    # -- filling -----------------------------------------------------------

    def add(self, key: bytes, value: bytes) -> None:
        """Append ``value`` to ``key``'s group."""
        if type(key) is not bytes or type(value) is not bytes:
            self._type_error(key, [value])
        active = self._active
        if active is None:
            active = self._new_active()
        values = active.groups.get(key)
        cost = len(value) + VALUE_OVERHEAD
        if values is None:
            cost += len(key) + KEY_OVERHEAD
        if self._used + cost > self._state.reserved and not self._grow(cost):
            if not self._make_room(len(value) + VALUE_OVERHEAD + len(key) + KEY_OVERHEAD):
                self._write_alone(key, [value])
                return
            active = self._new_active()
            values = None
            cost = len(value) + VALUE_OVERHEAD + len(key) + KEY_OVERHEAD
        if values is None:
            active.groups[key] = [value]
            active.invalidate()
        else:
            values.append(value)
        self._used += cost
        self._values += 1

    def add_values(self, key: bytes, values: Sequence[bytes]) -> None:
        """Append ``values``, in order, to ``key``'s group."""
        if not values:
            return
        if type(key) is not bytes or any(type(v) is not bytes for v in values):
            self._type_error(key, values)
        active = self._active
        if active is None:
            active = self._new_active()
        mine = active.groups.get(key)
        body = sum(map(len, values)) + len(values) * VALUE_OVERHEAD
        cost = body if mine is not None else body + len(key) + KEY_OVERHEAD
        if self._used + cost > self._state.reserved and not self._grow(cost):
            if not self._make_room(body + len(key) + KEY_OVERHEAD):
                self._write_alone(key, list(values))
                return
            active = self._new_active()
            mine = None
            cost = body + len(key) + KEY_OVERHEAD
        if mine is None:
            active.groups[key] = list(values)
            active.invalidate()
        else:
            mine.extend(values)
        self._used += cost
        self._values += len(values)

    def merge(self, other: "SpillingGroupTable") -> None:
        """Take ``other``'s groups after this table's (their values follow
        this table's values of the same key). Spilled data is moved by
        reference, never read; ``other`` is left empty and usable."""
        if other is self:
            raise ValueError("SpillingGroupTable.merge: a table cannot merge itself")
        if other._budget is not self._budget:
            raise ValueError("SpillingGroupTable.merge: the tables have different memory "
                             "budgets (%r and %r); a job's tables share one MemoryBudget"
                             % (self._budget, other._budget))
        self._check_open("merge")
        other._check_open("merge")
        other._close_writer()
        theirs = other._segments
        duplicate = 0
        if theirs and isinstance(theirs[0], _Memory) and self._segments \
                and isinstance(self._segments[-1], _Memory):
            # adjacent in-memory segments: one dict (same order, less to read later)
            last = self._segments[-1]
            for key, values in theirs[0].groups.items():
                mine = last.groups.get(key)
                if mine is None:
                    last.groups[key] = values
                else:
                    mine.extend(values)
                    duplicate += len(key) + KEY_OVERHEAD
            last.invalidate()
            theirs = theirs[1:]
        self._segments.extend(theirs)
        tail = self._segments[-1] if self._segments else None
        self._active = tail if isinstance(tail, _Memory) else None
        self._state.reserved += other._state.reserved
        self._state.paths.extend(other._state.paths)
        self._used += other._used - duplicate
        self._values += other._values
        self._spilled_bytes += other._spilled_bytes
        self._runs += other._runs
        other._state.reserved = 0
        other._state.paths.clear()
        other._segments = []
        other._active = None
        other._used = other._values = other._spilled_bytes = other._runs = 0

    def spill(self) -> None:
        """Write every in-memory group to disk now and release its memory."""
        self._check_open("spill")
        self._spill_memory()

    # -- reading -----------------------------------------------------------

    def groups(self) -> Iterator[Group]:
        """Every key once with all its values (see the module doc for the order).

        The value lists of in-memory groups are the table's own: do not
        change them. Reading does not empty the table; ``close()`` does.
        """
        [part] = self.groups_in_parts(1)
        return part

    def groups_in_parts(self, n: int) -> list[Iterator[Group]]:
        """``n`` iterators over disjoint sets of keys that together cover every
        key once, balanced by estimated size (empty ones when there are fewer
        hash buckets with data than ``n``). They may be read on different
        threads; each holds about one read partition at a time."""
        if n < 1:
            raise ValueError("SpillingGroupTable.groups_in_parts: n must be >= 1, got %d" % n)
        self._check_open("read")
        if self._state.writer is not None:
            self._flush("read")
        plan = self._plan(n)
        return [self._read(ranges) for ranges in plan]

    # -- state -------------------------------------------------------------

    def stats(self) -> TableStats:
        return TableStats(values=self._values, memory_bytes=self._used,
                          spilled_bytes=self._spilled_bytes, runs=self._runs)

    @property
    def spilled(self) -> bool:
        return any(isinstance(s, _Run) for s in self._segments)

    def close(self) -> None:
        """Delete this table's spill files (and those it merged) and release its
        memory. Idempotent; the table is unusable after it."""
        self._closed = True
        self._segments = []
        self._active = None
        self._used = 0
        self._finalizer()

    def __enter__(self) -> "SpillingGroupTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------

    def _type_error(self, key: object, values: Iterable[object]) -> None:
        bad = key if type(key) is not bytes else next(v for v in values if type(v) is not bytes)
        raise TypeError("SpillingGroupTable.add: keys and values must be encoded bytes, got "
                        "%s (%r); encode them with the key/value coder first"
                        % (type(bad).__name__, bad if len(repr(bad)) < 80 else repr(bad)[:77]
                           + "..."))

    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise ValueError("SpillingGroupTable.%s: the table is closed" % operation)

    def _new_active(self) -> _Memory:
        self._check_open("add")
        memory = _Memory()
        self._segments.append(memory)
        self._active = memory
        return memory

    def _grow(self, cost: int) -> bool:
        """Reserve enough for ``cost`` more bytes (a chunk if the budget allows)."""
        need = self._used + cost - self._state.reserved
        budget = self._budget
        if need < self._chunk and budget.try_reserve(self._chunk):
            self._state.reserved += self._chunk
            return True
        if budget.try_reserve(need):
            self._state.reserved += need
            return True
        return False

    def _make_room(self, cost: int) -> bool:
        """Spill what is in memory, then reserve ``cost``; False if it still
        does not fit (the budget is held by other tables, or smaller)."""
        self._spill_memory()
        return self._grow(cost)

    def _spill_memory(self) -> None:
        segments: list[Segment] = []
        wrote = False
        for segment in self._segments:
            if isinstance(segment, _Memory):
                if segment.groups:
                    segments.append(self._write_run(segment.groups))
                    wrote = True
            else:
                segments.append(segment)
        self._segments = segments
        self._active = None
        if self._state.reserved:
            self._budget.release(self._state.reserved)
        self._state.reserved = 0
        self._used = 0
        if wrote:   # what was written is freed now
            give_back_freed_memory()

    def _write_alone(self, key: bytes, values: list[bytes]) -> None:
        """A group that does not fit in memory even alone goes to disk at once."""
        self._segments.append(self._write_run({key: values}))
        self._active = None
        self._values += len(values)

    def _writer(self, nbytes: int) -> BinaryIO:
        state = self._state
        if state.writer is None:
            path, writer = self._folder.new_file(nbytes)
            state.paths.append(path)
            state.writer, state.writer_path = writer, path
        return state.writer

    def _write_run(self, groups: dict[bytes, list[bytes]]) -> _Run:
        order = sorted([(zlib.crc32(k), k) for k in groups])
        estimate_total = self._used
        writer = self._writer(estimate_total)
        path = self._state.writer_path
        assert path is not None
        start = pos = writer.tell()
        run = _Run(path, start, start)
        pieces: list[Any] = []
        append, extend, pack = pieces.append, pieces.extend, _HEADER.pack
        pending = 0   # bytes in pieces
        bucket = -1
        records = values_in_bucket = 0
        bucket_start = pos
        try:
            for crc, key in order:
                b = crc >> _SHIFT
                if b != bucket:
                    if bucket >= 0:
                        run.estimates.append(_estimate(pos - bucket_start, records,
                                                       values_in_bucket))
                    bucket = b
                    bucket_start = pos
                    run.buckets.append(b)
                    run.offsets.append(pos)
                    records = values_in_bucket = 0
                values = groups[key]
                try:
                    lengths = array.array(_LENGTH_CODE, map(len, values))
                except OverflowError as exc:
                    raise ValueError("spill: a value of key %r is larger than the 4 GiB a "
                                     "spill record holds" % key[:40]) from exc
                append(pack(len(key), len(values)))
                append(lengths)
                append(key)
                extend(values)
                size = _HEADER.size + 4 * len(values) + len(key) + sum(lengths)
                pos += size
                pending += size
                records += 1
                values_in_bucket += len(values)
                if pending >= _WRITE_BATCH:
                    writer.writelines(pieces)
                    pieces.clear()
                    pending = 0
            if bucket >= 0:
                run.estimates.append(_estimate(pos - bucket_start, records, values_in_bucket))
            writer.writelines(pieces)
            pieces.clear()
            writer.flush()
        except BaseException as exc:
            self._abandon_writer(start)
            if not isinstance(exc, OSError):
                raise
            raise SpillError("spilling grouped data", os.path.dirname(path), pos - start
                             or estimate_total, str(exc)) from exc
        run.end = pos
        self._spilled_bytes += pos - start
        self._runs += 1
        if self._runs == 1:
            _LOG.info("spill: a grouping table went over its share of the %d-byte memory "
                      "budget; spilling to %s", self._budget.limit, path)
        else:
            _LOG.debug("spill: run %d, %d bytes, %d keys to %s", self._runs, pos - start,
                       len(order), path)
        return run

    def _abandon_writer(self, good_end: int) -> None:
        """After a failed write: drop the writer and cut the file back to its
        last complete run (runs already written stay readable)."""
        state = self._state
        writer, path = state.writer, state.writer_path
        state.writer = None
        state.writer_path = None
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        if path is not None:
            try:
                os.truncate(path, good_end)
            except OSError:
                pass

    def _flush(self, operation: str) -> None:
        writer = self._state.writer
        if writer is None:
            return
        try:
            writer.flush()
        except OSError as exc:
            raise SpillError(operation, self._folder.parent, 0, str(exc)) from exc

    def _close_writer(self) -> None:
        state = self._state
        if state.writer is not None:
            self._flush("merge")
            try:
                state.writer.close()
            finally:
                state.writer = None
                state.writer_path = None

    def _plan(self, n: int) -> list[list[tuple[int, int]]]:
        """Bucket ranges per part: ``n`` parts balanced by estimated size, each
        cut into ranges whose spilled part fits ``read_partition_bytes``."""
        spilled = [0] * NUM_BUCKETS
        total = [0] * NUM_BUCKETS
        for segment in self._segments:
            if isinstance(segment, _Run):
                for b, e in zip(segment.buckets, segment.estimates):
                    spilled[b] += e
            else:
                segment.add_estimates(total)
        for b in range(NUM_BUCKETS):
            total[b] += spilled[b]
        grand = sum(total)
        used = [b for b in range(NUM_BUCKETS) if total[b]]
        # cut the non-empty buckets into n contiguous parts of similar size
        parts: list[list[int]] = [[] for _ in range(n)]
        acc = 0
        part = 0
        for b in used:
            while part < n - 1 and acc >= grand * (part + 1) / n and parts[part]:
                part += 1
            parts[part].append(b)
            acc += total[b]
        limit = self._read_partition_bytes
        plan: list[list[tuple[int, int]]] = []
        for buckets in parts:
            ranges: list[tuple[int, int]] = []
            lo = -1
            size = 0
            for b in buckets:
                if lo < 0:
                    lo, size = b, spilled[b]
                elif size + spilled[b] > limit:
                    ranges.append((lo, b))
                    lo, size = b, spilled[b]
                else:
                    size += spilled[b]
            if lo >= 0:
                ranges.append((lo, buckets[-1] + 1))
            plan.append(ranges)
        return plan

    def _read(self, ranges: list[tuple[int, int]]) -> Iterator[Group]:
        segments = list(self._segments)
        files: dict[str, BinaryIO] = {}
        try:
            for lo, hi in ranges:
                table: dict[bytes, list[bytes]] = {}
                borrowed: set[bytes] = set()
                for segment in segments:
                    if isinstance(segment, _Run):
                        self._read_run(segment, lo, hi, files, table, borrowed)
                        continue
                    groups = segment.groups
                    for key in segment.keys_in(lo, hi):
                        mine = table.get(key)
                        if mine is None:
                            table[key] = groups[key]
                            borrowed.add(key)
                        else:
                            if key in borrowed:
                                mine = table[key] = list(mine)
                                borrowed.discard(key)
                            mine.extend(groups[key])
                keys = sorted(table, key=_order)
                for key in keys:
                    yield key, table.pop(key)
        finally:
            for f in files.values():
                f.close()

    def _read_run(self, run: _Run, lo: int, hi: int, files: dict[str, BinaryIO],
                  table: dict[bytes, list[bytes]], borrowed: set[bytes]) -> None:
        start, end = run.span(lo, hi)
        if start >= end:
            return
        f = files.get(run.path)
        try:
            if f is None:
                f = files[run.path] = open(run.path, "rb")
            f.seek(start)
            if end - start <= _BLOB_LIMIT:
                records = _parse(_exact(f.read, end - start))
            else:
                records = _stream(f.read, end - start)
            for key, values in records:
                mine = table.get(key)
                if mine is None:
                    table[key] = values
                else:
                    if key in borrowed:
                        mine = table[key] = list(mine)
                        borrowed.discard(key)
                    mine.extend(values)
        except (OSError, EOFError) as exc:
            raise SpillError("reading spilled groups back", os.path.dirname(run.path),
                             end - start, "%s (%s)" % (exc, run.path)) from exc


def _parse(blob: bytes) -> Iterator[Group]:
    """The records of a run's byte range, read whole."""
    unpack_from, size = _HEADER.unpack_from, _HEADER.size
    pos, end = 0, len(blob)
    while pos < end:
        klen, count = unpack_from(blob, pos)
        pos += size
        lengths = memoryview(blob)[pos:pos + 4 * count].cast("I")
        pos += 4 * count
        key = blob[pos:pos + klen]
        pos += klen
        values = []
        for n in lengths:
            values.append(blob[pos:pos + n])
            pos += n
        lengths.release()
        yield key, values
    if pos != end:
        raise EOFError("spill record runs past its range (%d of %d bytes)" % (pos, end))


def _stream(read: Callable[[int], bytes], remaining: int) -> Iterator[Group]:
    """The records of a large byte range, read one at a time."""
    while remaining > 0:
        klen, count = _HEADER.unpack(_exact(read, _HEADER.size))
        lengths = array.array(_LENGTH_CODE)
        lengths.frombytes(_exact(read, 4 * count))
        key = _exact(read, klen)
        body = sum(lengths)
        if body <= _SLICE_LIMIT and count > 1:
            blob = _exact(read, body)
            cuts = list(itertools.accumulate(lengths, initial=0))
            values = [blob[cuts[i]:cuts[i + 1]] for i in range(count)]
        else:
            values = [_exact(read, n) for n in lengths]
        remaining -= _HEADER.size + 4 * count + klen + body
        yield key, values


def _exact(read: Callable[[int], bytes], n: int) -> bytes:
    data = read(n)
    if len(data) != n:
        raise EOFError("spill file ended early: wanted %d bytes, got %d" % (n, len(data)))
    return data
