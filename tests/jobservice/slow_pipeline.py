"""Pipeline pieces for the end-to-end tests. Workers in other processes import
this module (the tests put tests/ on the job server's PYTHONPATH)."""
from __future__ import annotations

import importlib
import json
import os
import time
import uuid
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics


class CountAndDouble(beam.DoFn):
    def __init__(self) -> None:
        self.seen = Metrics.counter("e2e", "seen")

    def process(self, element: int) -> Iterator[int]:
        self.seen.inc()
        yield element * 2


class BlockUntilReleased(beam.DoFn):
    """Writes ``started_path``, then waits until ``release_path`` exists."""

    def __init__(self, started_path: str, release_path: str) -> None:
        self.started_path = started_path
        self.release_path = release_path

    def process(self, element: bytes) -> Iterator[bytes]:
        with open(self.started_path, "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(self.release_path):
            time.sleep(0.2)
        yield element


class WriteWindowIndexes(beam.DoFn):
    """For ``(key, timestamps)`` of a GroupByKey over a PeriodicImpulse that
    started at ``start`` firing every ``interval`` s: one JSON file per pane
    in ``folder``, with the window and the element indexes in it (see
    ``read_window_indexes``)."""

    def __init__(self, folder: str, start: float, interval: float) -> None:
        self.folder = folder
        self.start = start
        self.interval = interval

    def process(self, element: Any, window: Any = beam.DoFn.WindowParam,
                pane: Any = beam.DoFn.PaneInfoParam) -> Iterator[int]:
        _, stamps = element
        indexes = sorted(round((float(s) - self.start) / self.interval) for s in stamps)
        path = os.path.join(self.folder, "window-%.3f-%d.json"
                            % (float(window.start), pane.index))
        with open(path + ".tmp", "w") as f:
            json.dump({"start": float(window.start), "end": float(window.end),
                       "indexes": indexes}, f)
        os.replace(path + ".tmp", path)
        yield len(indexes)


def read_window_indexes(folder: str) -> list[dict[str, Any]]:
    """What ``WriteWindowIndexes`` wrote so far, by window."""
    out = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("window-") and name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                out.append(json.load(f))
    return out


def check_complete_windows(windows: list[dict[str, Any]], start: float,
                           interval: float) -> list[int]:
    """Every element index in exactly one pane, from 0 with no gap, each in
    its own window, one pane per window; returns the indexes."""
    indexes = sorted(i for w in windows for i in w["indexes"])
    assert indexes == list(range(len(indexes))), windows
    for w in windows:
        assert all(w["start"] <= start + i * interval < w["end"] for i in w["indexes"]), w
    assert len({w["start"] for w in windows}) == len(windows), windows
    return indexes


class ReportWorker(beam.DoFn):
    """Writes, per element, where it ran to ``<out_dir>/<tag>-<uuid>.json``:
    pid and parent pid, this worker's GPU indexes (runtime context), the
    ``VALUE`` of each module in ``probe_modules`` (imported here, so staged
    packages are tested) and whether a pickled main session was staged. With
    ``hold_path`` it then waits until that file exists."""

    def __init__(self, out_dir: str, tag: str, probe_modules: tuple[str, ...] = (),
                 hold_path: Optional[str] = None) -> None:
        self.out_dir = out_dir
        self.tag = tag
        self.probe_modules = probe_modules
        self.hold_path = hold_path
        self.reported = Metrics.counter("e2e", "reported")

    def process(self, element: Any) -> Iterator[Any]:
        import beam_gpu_runner
        semi = os.environ.get("SEMI_PERSISTENT_DIRECTORY", "")
        record = {
            "tag": self.tag, "pid": os.getpid(), "ppid": os.getppid(),
            "gpus": [g.get_property("index") for g in beam_gpu_runner.runtime_context().gpus()],
            "modules": {m: importlib.import_module(m).VALUE for m in self.probe_modules},
            "semi_persistent_dir": semi,
            "main_session_staged": os.path.isfile(
                os.path.join(semi, "staged", "pickled_main_session")),
        }
        path = os.path.join(self.out_dir, "%s-%s.json" % (self.tag, uuid.uuid4().hex))
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
        self.reported.inc()
        while self.hold_path and not os.path.exists(self.hold_path):
            time.sleep(0.1)
        yield element


def read_reports(out_dir: str, tag: str) -> list[dict[str, Any]]:
    reports = []
    for name in sorted(os.listdir(out_dir)):
        if name.startswith(tag + "-") and name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as f:
                reports.append(json.load(f))
    return reports
