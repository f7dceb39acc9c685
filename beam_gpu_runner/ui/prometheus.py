"""``/metrics``: jobs, stages, user metrics and devices in Prometheus' text
exposition format (built with prometheus_client, which escapes label values).

Families (all prefixed ``beam_gpu_runner_``; labels in brackets):

* ``jobs`` [state]: jobs per state;
* ``stage_elements_in_total``, ``stage_elements_out_total``,
  ``stage_bytes_in_total``, ``stage_bytes_out_total``,
  ``stage_bundles_done_total``, ``stage_bundles_retried_total``,
  ``stage_bundles_split_total`` [job, stage, label]: counters;
  ``stage_bundles_running`` [job, stage, label]: gauge;
* ``stage_input_watermark_lag_seconds``, ``stage_output_watermark_lag_seconds``
  [job, stage, label]: now minus the watermark (0 once complete; absent before
  the stage has one);
* ``user_counter`` [job, namespace, name, step], ``user_gauge`` [...],
  ``user_distribution_count`` / ``_sum`` [...]: the pipeline's Beam metrics;
* ``device_leased_share`` [resource, index, uuid, name, fake, job, stage,
  worker]: 1.0 (or the share) per holder;
  ``device_utilization_percent``, ``device_memory_used_bytes``,
  ``device_memory_total_bytes`` [resource, index, uuid, name]: NVML readings of
  real GPUs.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from beam_gpu_runner.status import WATERMARK_DONE, DeviceStatus, JobStatus

PREFIX = "beam_gpu_runner_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Job states always reported (0 when no job is in them), so graphs start at 0.
STATES = ("STOPPED", "STARTING", "RUNNING", "DRAINING", "CANCELLING", "DONE", "FAILED",
          "CANCELLED", "DRAINED")

_STAGE_LABELS = ["job", "stage", "label"]
_USER_LABELS = ["job", "namespace", "name", "step"]
_DEVICE_LABELS = ["resource", "index", "uuid", "name"]


def _lag(now: float, watermark: int | None) -> float | None:
    if watermark is None:
        return None
    if watermark >= WATERMARK_DONE:
        return 0.0
    return max(0.0, now - watermark / 1e6)


class _Snapshot(Collector):
    def __init__(self, jobs: Sequence[JobStatus], devices: Sequence[DeviceStatus],
                 now: float) -> None:
        self._jobs = jobs
        self._devices = devices
        self._now = now

    def collect(self) -> Iterator[Metric]:
        yield from self._job_families()
        yield from self._stage_families()
        yield from self._user_families()
        yield from self._device_families()

    def _job_families(self) -> Iterator[Metric]:
        counts = {state: 0 for state in STATES}
        for job in self._jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        family = GaugeMetricFamily(PREFIX + "jobs", "Jobs by state.", labels=["state"])
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family

    def _stage_families(self) -> Iterator[Metric]:
        counters = {
            "elements_in": "Elements the stage read.",
            "elements_out": "Elements the stage wrote.",
            "bytes_in": "Encoded bytes the stage read.",
            "bytes_out": "Encoded bytes the stage wrote.",
            "bundles_done": "Bundles that completed.",
            "bundles_retried": "Bundle attempts retried (a worker died).",
            "bundles_split": "Bundles split (residuals, partitioned parts).",
        }
        families = {
            field: CounterMetricFamily(PREFIX + "stage_" + field, text, labels=_STAGE_LABELS)
            for field, text in counters.items()}
        running = GaugeMetricFamily(PREFIX + "stage_bundles_running",
                                    "Bundles running now.", labels=_STAGE_LABELS)
        in_lag = GaugeMetricFamily(
            PREFIX + "stage_input_watermark_lag_seconds",
            "Now minus the stage's input watermark (0 once its input is complete).",
            labels=_STAGE_LABELS)
        out_lag = GaugeMetricFamily(
            PREFIX + "stage_output_watermark_lag_seconds",
            "Now minus the stage's output watermark (0 once complete).",
            labels=_STAGE_LABELS)
        for job in self._jobs:
            for stage in job.stages:
                labels = [job.job_id, stage.name, stage.label]
                for field, family in families.items():
                    family.add_metric(labels, getattr(stage, field))
                running.add_metric(labels, stage.bundles_running)
                lag = _lag(self._now, stage.input_watermark)
                if lag is not None:
                    in_lag.add_metric(labels, lag)
                lag = _lag(self._now, stage.output_watermark)
                if lag is not None:
                    out_lag.add_metric(labels, lag)
        yield from families.values()
        yield running
        yield in_lag
        yield out_lag

    def _user_families(self) -> Iterator[Metric]:
        counters = CounterMetricFamily(PREFIX + "user_counter",
                                       "The pipeline's Beam counters.", labels=_USER_LABELS)
        gauges = GaugeMetricFamily(PREFIX + "user_gauge",
                                   "The pipeline's Beam gauges.", labels=_USER_LABELS)
        dist_count = GaugeMetricFamily(PREFIX + "user_distribution_count",
                                       "Values in the pipeline's Beam distributions.",
                                       labels=_USER_LABELS)
        dist_sum = GaugeMetricFamily(PREFIX + "user_distribution_sum",
                                     "Sum of the pipeline's Beam distributions.",
                                     labels=_USER_LABELS)
        for job in self._jobs:
            for metric in job.metrics:
                labels = [job.job_id, metric.namespace, metric.name, metric.step]
                value = metric.value
                if metric.kind == "counter" and isinstance(value, (int, float)):
                    counters.add_metric(labels, value)
                elif metric.kind == "gauge" and isinstance(value, dict) \
                        and isinstance(value.get("value"), (int, float)):
                    gauges.add_metric(labels, value["value"])
                elif metric.kind == "distribution" and isinstance(value, dict):
                    if isinstance(value.get("count"), (int, float)):
                        dist_count.add_metric(labels, value["count"])
                    if isinstance(value.get("sum"), (int, float)):
                        dist_sum.add_metric(labels, value["sum"])
        yield counters
        yield gauges
        yield dist_count
        yield dist_sum

    def _device_families(self) -> Iterator[Metric]:
        leased = GaugeMetricFamily(
            PREFIX + "device_leased_share",
            "Share of a device a holder leased (one series per holder).",
            labels=_DEVICE_LABELS + ["fake", "job", "stage", "worker"])
        util = GaugeMetricFamily(PREFIX + "device_utilization_percent",
                                 "GPU utilisation (NVML).", labels=_DEVICE_LABELS)
        used = GaugeMetricFamily(PREFIX + "device_memory_used_bytes",
                                 "GPU memory used (NVML).", labels=_DEVICE_LABELS)
        total = GaugeMetricFamily(PREFIX + "device_memory_total_bytes",
                                  "GPU memory in all.", labels=_DEVICE_LABELS)
        seen: set[str] = set()
        for device in self._devices:
            labels = [device.resource, device.index, device.uuid, device.name]
            if device.holder_worker is not None or device.holder_job is not None:
                leased.add_metric(
                    labels + ["true" if device.fake else "false", device.holder_job or "",
                              device.holder_stage or "", device.holder_worker or ""],
                    device.share if device.share is not None else 1.0)
            if device.uuid in seen:   # one row per holder: readings once
                continue
            seen.add(device.uuid)
            if device.utilization_percent is not None:
                util.add_metric(labels, device.utilization_percent)
            if device.memory_used_bytes is not None:
                used.add_metric(labels, device.memory_used_bytes)
            if device.memory_total_bytes is not None:
                total.add_metric(labels, device.memory_total_bytes)
        yield leased
        yield util
        yield used
        yield total


def exposition(jobs: Sequence[JobStatus], devices: Sequence[DeviceStatus],
               now: float) -> bytes:
    """The text exposition of ``jobs`` and ``devices`` at time ``now``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(jobs, devices, now))
    data: bytes = generate_latest(registry)
    return data


__all__ = ["CONTENT_TYPE", "PREFIX", "exposition"]
