"""One run's web UI (ui/sources.py): ``serve_run`` from pipeline options."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_gpu_runner.ui.access import AccessConfigError
from beam_gpu_runner.ui.sources import SingleJobSource, serve_run

from .fakes import streaming_job


def test_no_ui_port_no_ui() -> None:
    assert serve_run(lambda: streaming_job(), PipelineOptions([])) is None


def test_serves_the_run_and_the_configured_devices(tmp_path: Path) -> None:
    ticks = []

    def status():  # type: ignore[no-untyped-def]
        ticks.append(1)
        return streaming_job("run-1", len(ticks))
    options = PipelineOptions([
        "--ui_port=0", "--lease_dir=%s" % tmp_path,
        "--external_resource=external-resource.gpu.driver-factory.class=testing",
        "--external_resource=external-resource.gpu.param.num-devices=2"])
    server = serve_run(status, options)
    assert server is not None
    try:
        with urllib.request.urlopen(server.url + "api/jobs/run-1", timeout=30) as resp:
            first = json.load(resp)["job"]["stages"][0]["elements_in"]
        with urllib.request.urlopen(server.url + "api/jobs/run-1", timeout=30) as resp:
            second = json.load(resp)["job"]["stages"][0]["elements_in"]
        assert second > first
        with urllib.request.urlopen(server.url + "api/devices", timeout=30) as resp:
            devices = json.load(resp)["devices"]
        assert [d["fake"] for d in devices] == [True, True]
    finally:
        server.stop()


def test_beyond_loopback_without_flags_fails() -> None:
    with pytest.raises(AccessConfigError):
        serve_run(lambda: streaming_job(),
                  PipelineOptions(["--ui_port=0", "--ui_host=0.0.0.0"]))


def test_single_job_source_without_devices() -> None:
    source = SingleJobSource(lambda: streaming_job("x"))
    assert [j.job_id for j in source.job_statuses()] == ["x"]
    assert source.device_statuses() == []
    source.close()
