"""Host-wide device leases: no two holders, in one job or several, share a device.

One JSON file (``beam-gpu-runner-leases.json``) in the lease folder, changed
only under a file lock (filelock). Leases are keyed by device (its UUID) and
record the holder's pid and process start time (psutil) and a share: a device's
shares sum to at most 1.0, so fractional hints (``count:0.5``) share devices
and whole ones never do. Leases are released explicitly, on clean interpreter
exit (atexit), and reclaimed when their holder is dead (pid gone, a zombie, or
the pid reused by a process with another start time).

The folder is ``--lease_dir``, else ``$BEAM_GPU_RUNNER_LEASE_DIR``, else the
temp folder; every process that must not collide has to use the same one.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import threading
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Optional, Sequence

import filelock
import psutil

_LOG = logging.getLogger(__name__)

LEASE_DIR_ENV = "BEAM_GPU_RUNNER_LEASE_DIR"
LEASE_FILE = "beam-gpu-runner-leases.json"
_EPS = 1e-9
_START_TIME_TOLERANCE_S = 0.05


class LeaseError(RuntimeError):
    """The lease file cannot be read or written (one message arg; pickles)."""


def default_lease_dir(option: Optional[str] = None) -> str:
    """``option`` (``--lease_dir``), else ``$BEAM_GPU_RUNNER_LEASE_DIR``, else tempdir."""
    return option or os.environ.get(LEASE_DIR_ENV) or tempfile.gettempdir()


def process_start_time(pid: int) -> Optional[float]:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def holder_alive(pid: int, start_time: float) -> bool:
    """Whether process ``pid`` started at ``start_time`` is still running."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(float(proc.create_time()) - start_time) <= _START_TIME_TOLERANCE_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:   # another user's live process
        return True


@dataclass(frozen=True)
class Lease:
    lease_id: str
    device_key: str          # device UUID (or resource:index when it has none)
    share: float             # (0, 1]; 1.0 is the whole device
    pid: int
    start_time: float
    holder: str = ""         # e.g. "stage/worker-3"
    resource: str = ""
    index: str = ""
    name: str = ""
    job: str = ""            # the holding job's id ("" when not given)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Lease":
        # Keys a newer version added are ignored, so versions can share a file.
        return cls(**{k: v for k, v in doc.items() if k in _LEASE_FIELDS})


_LEASE_FIELDS = frozenset(f.name for f in fields(Lease))


@dataclass(frozen=True)
class Candidate:
    """A device that may be leased, in preference order."""

    device_key: str
    resource: str = ""
    index: str = ""
    name: str = ""


@dataclass(frozen=True)
class LeaseOutcome:
    """What ``acquire`` got; ``leases`` is empty when the request did not fit.

    ``usage`` is each candidate's leased share at decision time (after
    reclaiming dead holders), for error messages.
    """

    leases: tuple[Lease, ...]
    usage: tuple[tuple[str, float], ...]

    @property
    def ok(self) -> bool:
        return bool(self.leases)


class LeaseTable:
    """The lease file in one folder. Thread-safe; safe across processes."""

    def __init__(self, lease_dir: Optional[str] = None) -> None:
        self.lease_dir = default_lease_dir(lease_dir)
        try:
            os.makedirs(self.lease_dir, exist_ok=True)
        except OSError as exc:
            raise LeaseError("creating lease folder %r (--lease_dir / $%s) failed: %s"
                             % (self.lease_dir, LEASE_DIR_ENV, exc)) from None
        self.path = os.path.join(self.lease_dir, LEASE_FILE)
        self._lock = filelock.FileLock(self.path + ".lock", mode=0o666)
        self._thread_lock = threading.Lock()
        self._pid = os.getpid()
        start = process_start_time(self._pid)
        assert start is not None
        self._start_time = start
        self._mine: set[str] = set()
        _register_for_exit(self)

    # -- file access (call only under both locks) ---------------------------
    def _read(self) -> list[Lease]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LeaseError("reading lease file %s failed: %s" % (self.path, exc)) from None
        if not text.strip():
            return []
        try:
            return [Lease.from_json(d) for d in json.loads(text)["leases"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise LeaseError(
                "lease file %s is not the JSON beam-gpu-runner writes (%s); if no job "
                "is running on this host, delete it" % (self.path, exc)) from None

    def _write(self, leases: Sequence[Lease]) -> None:
        tmp = "%s.%d.tmp" % (self.path, self._pid)
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"version": 1, "leases": [lease.to_json() for lease in leases]},
                          handle, indent=1, sort_keys=True)
            try:
                os.chmod(tmp, 0o666)
            except OSError:
                pass
            os.replace(tmp, self.path)
        except OSError as exc:
            raise LeaseError("writing lease file %s failed: %s" % (self.path, exc)) from None

    def _live(self, leases: Iterable[Lease]) -> list[Lease]:
        kept = []
        for lease in leases:
            if holder_alive(lease.pid, lease.start_time):
                kept.append(lease)
            else:
                _LOG.info("reclaiming lease on %s (%s index %s) from dead holder pid %d "
                          "(%s)", lease.device_key, lease.resource, lease.index,
                          lease.pid, lease.holder)
        return kept

    # -- public API ----------------------------------------------------------
    def acquire(self, candidates: Sequence[Candidate], count: int, share: float = 1.0,
                holder: str = "", job: str = "") -> LeaseOutcome:
        """Lease ``count`` distinct candidates, ``share`` of each, atomically.

        Whole devices (share 1.0) go to free candidates in the given order; a
        fraction goes to the fullest candidate it still fits on (best fit, so
        whole devices stay free for others). All or nothing. ``holder`` and
        ``job`` only label the leases (``resources``, the devices page).
        """
        if count < 1 or not 0 < share <= 1.0:
            raise ValueError("acquire: count must be >= 1 and 0 < share <= 1, got "
                             "count=%r share=%r" % (count, share))
        with self._thread_lock, self._lock:
            live = self._live(self._read())
            used: dict[str, float] = {}
            for lease in live:
                used[lease.device_key] = used.get(lease.device_key, 0.0) + lease.share
            usage = tuple((c.device_key, used.get(c.device_key, 0.0)) for c in candidates)
            fitting = [(pos, c) for pos, c in enumerate(candidates)
                       if used.get(c.device_key, 0.0) + share <= 1.0 + _EPS]
            if share < 1.0:
                fitting.sort(key=lambda pc: (-used.get(pc[1].device_key, 0.0), pc[0]))
            if len(fitting) < count:
                self._write(live)
                return LeaseOutcome((), usage)
            new = tuple(
                Lease(lease_id=uuid.uuid4().hex, device_key=c.device_key, share=share,
                      pid=self._pid, start_time=self._start_time, holder=holder,
                      resource=c.resource, index=c.index, name=c.name, job=job)
                for _, c in fitting[:count])
            self._write(live + list(new))
            self._mine.update(lease.lease_id for lease in new)
            return LeaseOutcome(new, usage)

    def release(self, lease_ids: Iterable[str]) -> int:
        """Drop these leases (and any of dead holders); returns how many were dropped."""
        ids = set(lease_ids)
        if not ids:
            return 0
        with self._thread_lock, self._lock:
            before = self._read()
            kept = [lease for lease in self._live(before) if lease.lease_id not in ids]
            self._write(kept)
            self._mine.difference_update(ids)
            return sum(1 for lease in before if lease.lease_id in ids)

    def release_mine(self) -> int:
        """Release every lease this object acquired and still holds."""
        return self.release(list(self._mine))

    def close(self) -> None:
        """Release this object's leases and forget it at exit."""
        self.release_mine()
        with _TABLES_LOCK:
            if self in _TABLES:
                _TABLES.remove(self)

    def snapshot(self) -> list[Lease]:
        """The live leases now (dead holders' are reclaimed on the way)."""
        with self._thread_lock, self._lock:
            before = self._read()
            live = self._live(before)
            if len(live) != len(before):
                self._write(live)
            return live


_TABLES: list[LeaseTable] = []
_TABLES_LOCK = threading.Lock()


def _register_for_exit(table: LeaseTable) -> None:
    with _TABLES_LOCK:
        if not _TABLES:
            atexit.register(_release_all_at_exit)
        _TABLES.append(table)


def _release_all_at_exit() -> None:
    with _TABLES_LOCK:
        tables = list(_TABLES)
    for table in tables:
        if table._mine and table._pid == os.getpid():
            try:
                table.release_mine()
            except Exception as exc:   # never fail interpreter exit
                _LOG.warning("releasing leases in %s at exit failed: %s", table.path, exc)
