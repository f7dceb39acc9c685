"""Idle workers serve the next job of the process (placement/warm.py), end to end."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import apache_beam as beam
import psutil
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.value_provider import RuntimeValueProvider

from beam_gpu_runner.placement.warm import WARM
from beam_gpu_runner.resources.runtime_context import runtime_context
from beam_gpu_runner.runner import GpuRunner

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_workers")]


class _Report(beam.DoFn):
    """Writes what the worker running it sees into ``folder/<job>.json``: its
    process, the job's options as the harness got them (--job_name, read as
    a runtime value provider), an environment variable, its worker id."""

    def __init__(self, folder: str, job: str) -> None:
        self._path = os.path.join(folder, job + ".json")
        self._tag = RuntimeValueProvider("job_name", str, "none")

    def process(self, element: int) -> Iterator[int]:
        with open(self._path, "w") as f:
            json.dump({"pid": os.getpid(), "tag": self._tag.get(),
                       "var": os.environ.get("REUSE_TEST_VAR"),
                       "worker_id": runtime_context().worker_id}, f)
        yield element


def _run(folder: Path, job: str, *args: str) -> dict[str, Any]:
    options = PipelineOptions(["--num_workers=1", "--job_name=%s" % job, *args])
    with beam.Pipeline(runner=GpuRunner(), options=options) as p:
        _ = p | beam.Create([1]) | beam.ParDo(_Report(str(folder), job))
    report: dict[str, Any] = json.loads((folder / (job + ".json")).read_text())
    return report


@pytest.fixture(autouse=True)
def empty_reserve() -> None:
    WARM.retire_all()   # other tests' idle workers must not serve these jobs


def test_the_next_job_runs_on_the_idle_worker_with_its_own_options_and_environment(
        tmp_path, monkeypatch):
    monkeypatch.setenv("REUSE_TEST_VAR", "one")
    first = _run(tmp_path, "first")
    assert len(WARM) == 1   # the job ended cleanly: its worker waits for the next
    monkeypatch.setenv("REUSE_TEST_VAR", "two")
    second = _run(tmp_path, "second")
    assert second["pid"] == first["pid"]
    assert (first["tag"], first["var"]) == ("first", "one")
    assert (second["tag"], second["var"]) == ("second", "two")
    assert second["worker_id"] != first["worker_id"]


def test_with_no_keep_alive_workers_end_with_their_job(tmp_path):
    first = _run(tmp_path, "first", "--worker_keep_alive=0")
    assert len(WARM) == 0
    second = _run(tmp_path, "second", "--worker_keep_alive=0")
    assert second["pid"] != first["pid"]


def test_a_job_whose_interpreter_would_start_differently_gets_a_new_worker(
        tmp_path, monkeypatch):
    first = _run(tmp_path, "first")
    monkeypatch.setenv("PYTHONHASHSEED", "123")   # read only when Python starts
    second = _run(tmp_path, "second")
    assert second["pid"] != first["pid"]


def test_workers_holding_gpus_are_not_parked(tmp_path):
    options = PipelineOptions(["--num_workers=1", "--fake_gpus=1"])
    with beam.Pipeline(runner=GpuRunner(), options=options) as p:
        _ = (p | beam.Create([1])
             | beam.ParDo(_Report(str(tmp_path), "gpu")).with_resource_hints(
                     accelerator="type:nvidia-h100;count:1"))
    gpu_worker = json.loads((tmp_path / "gpu.json").read_text())["pid"]
    # The job's GPU worker has ended (reaped by the runner); a CPU worker of
    # its unhinted stages may wait for the next job.
    assert not psutil.pid_exists(gpu_worker)
