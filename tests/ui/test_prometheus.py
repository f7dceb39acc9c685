"""/metrics in Prometheus' text exposition format (ui/prometheus.py), read back
with prometheus_client's parser and a strict line check."""
from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from beam_gpu_runner.status import WATERMARK_DONE, DeviceStatus, JobStatus, StageStatus
from beam_gpu_runner.ui.prometheus import exposition

from .fakes import XSS_LABEL, streaming_job

NOW = 1_700_000_100.0
# name{label="value",...} number   (values: any escaped text)
_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r'[-+]?([0-9.]+(e[-+]?[0-9]+)?|Inf|NaN)$')


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, metric: str, **labels: str) -> float:
    key = (metric, tuple(sorted(labels.items())))
    assert key in found, "no sample %s %s; have %s" % (metric, labels, sorted(
        k for k in found if k[0] == metric))
    return float(found[key])


def test_every_line_is_a_comment_or_a_well_formed_sample() -> None:
    text = exposition([streaming_job("j1", 2)], [], NOW).decode()
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or \
            _SAMPLE.match(line), line


def test_stage_counters_gauges_and_watermark_lag() -> None:
    job = streaming_job("j1", tick=2, start_time=NOW - 10)
    found = samples(exposition([job], [], NOW).decode())
    labels = {"job": "j1", "stage": "s2", "label": XSS_LABEL}
    assert value(found, "beam_gpu_runner_stage_elements_in_total", **labels) == 200
    assert value(found, "beam_gpu_runner_stage_elements_out_total", **labels) == 200
    assert value(found, "beam_gpu_runner_stage_bytes_out_total", **labels) == 3200
    assert value(found, "beam_gpu_runner_stage_bundles_done_total", **labels) == 2
    assert value(found, "beam_gpu_runner_stage_bundles_retried_total", **labels) == 1
    assert value(found, "beam_gpu_runner_stage_bundles_running", **labels) == 1
    # input watermark = start + 2 s = NOW - 8 s; output 0.5 s behind it
    assert abs(value(found, "beam_gpu_runner_stage_input_watermark_lag_seconds",
                     **labels) - 8.0) < 1e-6
    assert abs(value(found, "beam_gpu_runner_stage_output_watermark_lag_seconds",
                     **labels) - 8.5) < 1e-6
    # a complete input lags by 0
    assert value(found, "beam_gpu_runner_stage_input_watermark_lag_seconds",
                 job="j1", stage="s1", label="PeriodicImpulse/GenSequence") == 0.0


def test_a_stage_without_watermarks_has_no_lag_sample() -> None:
    job = JobStatus("j", "j", "RUNNING", NOW, stages=(StageStatus("a", "A"),))
    found = samples(exposition([job], [], NOW).decode())
    assert not [k for k in found if k[0].endswith("watermark_lag_seconds")]
    assert value(found, "beam_gpu_runner_stage_elements_in_total",
                 job="j", stage="a", label="A") == 0


def test_jobs_by_state_include_zeroes() -> None:
    jobs = [streaming_job("a"), streaming_job("b"), streaming_job("c", state="FAILED")]
    found = samples(exposition(jobs, [], NOW).decode())
    assert value(found, "beam_gpu_runner_jobs", state="RUNNING") == 2
    assert value(found, "beam_gpu_runner_jobs", state="FAILED") == 1
    assert value(found, "beam_gpu_runner_jobs", state="DONE") == 0


def test_user_metrics() -> None:
    found = samples(exposition([streaming_job("j1", tick=3)], [], NOW).decode())
    assert value(found, "beam_gpu_runner_user_counter_total", job="j1", namespace="mnist",
                 name="images", step=XSS_LABEL) == 300
    assert value(found, "beam_gpu_runner_user_distribution_count", job="j1",
                 namespace="mnist", name="latency_ms", step=XSS_LABEL) == 3
    assert value(found, "beam_gpu_runner_user_distribution_sum", job="j1",
                 namespace="mnist", name="latency_ms", step=XSS_LABEL) == 36
    assert value(found, "beam_gpu_runner_user_gauge", job="j1", namespace="mnist",
                 name="accuracy", step="Stats") == 92


def test_devices_holders_and_readings() -> None:
    base = dict(resource="gpu", name="NVIDIA H100")
    devices = [
        DeviceStatus(index="0", uuid="GPU-aaa", utilization_percent=75.0,
                     memory_used_bytes=1024, memory_total_bytes=4096, holder_job="j1",
                     holder_worker="worker-2", holder_stage="s2", share=0.5, **base),
        DeviceStatus(index="0", uuid="GPU-aaa", utilization_percent=75.0,
                     memory_used_bytes=1024, memory_total_bytes=4096, holder_job="j2",
                     holder_worker="worker-1", holder_stage="t", share=0.5, **base),
        DeviceStatus(index="1", uuid="GPU-testing-1", fake=True, **base),
    ]
    found = samples(exposition([], devices, NOW).decode())
    dev = {"resource": "gpu", "index": "0", "uuid": "GPU-aaa", "name": "NVIDIA H100"}
    assert value(found, "beam_gpu_runner_device_utilization_percent", **dev) == 75.0
    assert value(found, "beam_gpu_runner_device_memory_used_bytes", **dev) == 1024
    assert value(found, "beam_gpu_runner_device_memory_total_bytes", **dev) == 4096
    assert value(found, "beam_gpu_runner_device_leased_share", fake="false", job="j1",
                 stage="s2", worker="worker-2", **dev) == 0.5
    assert value(found, "beam_gpu_runner_device_leased_share", fake="false", job="j2",
                 stage="t", worker="worker-1", **dev) == 0.5
    # the free fake device: no holder series, no readings
    assert not [k for k in found if ("uuid", "GPU-testing-1") in k[1]]


def test_label_values_with_quotes_backslashes_and_newlines_round_trip() -> None:
    nasty = 'a "quoted"\\ label\nwith a newline ' + XSS_LABEL
    job = JobStatus("j", "j", "RUNNING", NOW, stages=(
        StageStatus("s", nasty, elements_in=7, output_watermark=WATERMARK_DONE),))
    text = exposition([job], [], NOW).decode()
    for line in text.splitlines():
        assert line.startswith("#") or _SAMPLE.match(line), line
    found = samples(text)
    assert value(found, "beam_gpu_runner_stage_elements_in_total",
                 job="j", stage="s", label=nasty) == 7
