"""The JSON documents of the web UI (ui/api.py)."""
from __future__ import annotations

import json

from beam_gpu_runner.status import WATERMARK_DONE, DeviceStatus
from beam_gpu_runner.ui import api

from .fakes import XSS_LABEL, streaming_job


def test_public_options_mask_secrets_and_drop_staged_files() -> None:
    out = api.public_options({"aws_secret_access_key": "k", "gcp_oauth_token": "t",
                              "db_password": "p", "files_to_stage": "/a.py",
                              "job_name": "j", "num_workers": 3})
    assert out == {"aws_secret_access_key": api.HIDDEN, "db_password": api.HIDDEN,
                   "gcp_oauth_token": api.HIDDEN, "job_name": "j", "num_workers": "3"}


def test_job_summary_counts_stages_done_and_elements() -> None:
    job = streaming_job("j1", tick=3)
    summary = api.job_summary(job)
    assert summary["job_id"] == "j1" and summary["state"] == "RUNNING"
    assert summary["stages"] == 3
    assert summary["stages_done"] == 0
    assert summary["elements_in"] == 900
    assert summary["bundles_running"] == 2
    assert summary["workers"] == 3
    assert summary["options"]["aws_secret_access_key"] == api.HIDDEN
    assert "files_to_stage" not in summary["options"]
    assert summary["duration"] is None


def test_a_stage_is_done_when_its_output_watermark_is_complete() -> None:
    job = streaming_job()
    done = job.stages[0].__class__(name="x", label="x", output_watermark=WATERMARK_DONE)
    assert api.stage_done(done)
    assert not api.stage_done(job.stages[1])


def test_job_document_is_plain_json_with_every_field() -> None:
    job = streaming_job("j1", tick=2, error="ValueError: boom")
    doc = json.loads(json.dumps(api.job_document(job, now=1_700_000_010.0),
                                allow_nan=False))
    assert doc["now"] == 1_700_000_010.0
    body = doc["job"]
    assert body["name"] == "streaming " + XSS_LABEL
    assert [s["label"] for s in body["stages"]] == [
        "PeriodicImpulse/GenSequence", XSS_LABEL, "WriteToSink"]
    assert body["stages"][1]["hint"] == "type:nvidia;count:1"
    assert body["stages"][1]["bundles_retried"] == 1
    assert body["edges"] == [["s1", "s2"], ["s2", "s3"]]
    assert body["workers"][1]["devices"] == ["0"]
    assert {m["kind"] for m in body["metrics"]} == {"counter", "distribution", "gauge",
                                                   "string_set"}
    assert body["error"] == "ValueError: boom"
    assert XSS_LABEL in body["traceback"]
    assert body["options"]["aws_secret_access_key"] == api.HIDDEN
    assert "do-not-show" not in json.dumps(doc)
    assert body["stages_done"] == 0


def test_jobs_and_devices_documents() -> None:
    jobs = [streaming_job("a"), streaming_job("b", state="DONE")]
    doc = api.jobs_document(jobs, now=5.0)
    assert [j["job_id"] for j in doc["jobs"]] == ["a", "b"]
    assert api.find_job(jobs, "b") is jobs[1]
    assert api.find_job(jobs, "c") is None
    device = DeviceStatus("gpu", "0", "GPU-testing-0", "H100", fake=True, holder_job="a",
                          holder_worker="worker-2", holder_stage="s2")
    ddoc = api.devices_document([device], now=5.0)
    assert ddoc["devices"][0]["holder_worker"] == "worker-2"
    assert ddoc["devices"][0]["fake"] is True


def test_non_finite_numbers_become_null() -> None:
    from beam_gpu_runner.status import JobStatus, MetricStatus
    job = JobStatus("j", "j", "RUNNING", 1.0, metrics=(MetricStatus(
        "ns", "empty", "distribution", value={"count": 0, "mean": float("nan"),
                                              "max": float("-inf")}),))
    doc = api.json_safe(api.job_document(job, now=2.0))
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text)["job"]["metrics"][0]["value"] == {
        "count": 0, "mean": None, "max": None}
