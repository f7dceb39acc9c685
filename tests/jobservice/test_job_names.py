"""Job names and the server's own flags, end to end: a job server in a
subprocess (its stderr read afterwards), Beam's PortableRunner clients here."""
from __future__ import annotations

import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_job_api_pb2

from beam_gpu_runner.jobservice.service import job_name_for, pipeline_label

from .helpers import STARTUP_LIMIT_S, job_stub, pick_free_port, wait_until_serving


def _pipeline_proto():
    p = beam.Pipeline()
    _ = (p | "Numbers" >> beam.Create([1]) | "Double" >> beam.Map(lambda x: 2 * x)
         | "Keep" >> beam.Filter(bool) | "Show" >> beam.Map(str))
    return p.to_runner_api()


def test_the_servers_own_flags_are_not_job_options(monkeypatch, caplog):
    from apache_beam.runners.job import utils as job_utils
    from beam_gpu_runner.jobservice.job_options import job_pipeline_options
    monkeypatch.setattr(sys, "argv", ["job-server", "--port=8099", "--executor", "m:f"])
    struct = job_utils.dict_to_struct({"beam:option:job_name:v1": "nightly"})
    options = job_pipeline_options(struct)
    assert options.get_all_options(drop_default=True, retain_unknown_options=True) == {
        "job_name": "nightly"}
    options.get_all_options(drop_default=True)
    assert "Discarding unparseable args" not in caplog.text


def test_names_come_from_job_name_then_the_client_then_the_pipeline():
    proto = _pipeline_proto()
    assert pipeline_label(proto) == "Numbers-Double-Keep+1"
    assert job_name_for("nightly", "job", proto) == "nightly"
    assert job_name_for(None, "WordCount-alice-1130", proto) == "WordCount-alice-1130"
    assert job_name_for(None, "job", proto) == "Numbers-Double-Keep+1"   # Python's client
    assert job_name_for("", "", None) == "job"                           # nothing to go on


@pytest.mark.slow
def test_jobs_are_named_and_server_flags_stay_out_of_their_options(tmp_path):
    port = pick_free_port()
    err = open(tmp_path / "server.err", "w+")
    # "--port=N", as a user types it: Beam warned about it in every job
    proc = subprocess.Popen([sys.executable, "-m", "beam_gpu_runner.cli", "job-server",
                             "--port=%d" % port], stderr=err)
    endpoint = "localhost:%d" % port
    try:
        wait_until_serving(endpoint, proc)
        # PROCESS: the stages run on the server's own workers, which relayed
        # the warning about the leaked flag
        for extra in (["--job_name=nightly-counts"], []):
            options = PipelineOptions([
                "--runner=PortableRunner", "--job_endpoint=%s" % endpoint,
                "--environment_type=PROCESS", '--environment_config={"command": "unused"}',
                "--experiments=disable_logging_submission_environment", *extra])
            with beam.Pipeline(options=options) as p:
                _ = p | "Numbers" >> beam.Create([1, 2]) | "Double" >> beam.Map(lambda x: 2 * x)
        jobs = job_stub(endpoint).GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info
        assert sorted(j.job_name for j in jobs) == ["Numbers-Double", "nightly-counts"]
        assert all(j.job_id.startswith(j.job_name.split("(")[0]) for j in jobs)
    finally:
        proc.terminate()
        proc.wait(STARTUP_LIMIT_S)
    err.seek(0)
    log = err.read()
    assert "Running job nightly-counts-" in log
    assert "Discarding unparseable args" not in log, log
