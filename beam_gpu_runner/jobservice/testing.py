"""Job executors built on Beam's FnApiRunner, for testing the job server
without GpuRunner (and for running it on machines where GpuRunner is not
wanted). Select one with ``--executor``:

* ``beam_gpu_runner.jobservice.testing:FnApiRunnerExecutor`` runs each job on
  a thread of the server. Fast; ``cancel`` only marks the job CANCELLED (the
  FnApiRunner thread cannot be interrupted and runs on in the background).
* ``beam_gpu_runner.jobservice.testing:SubprocessFnApiRunnerExecutor`` runs
  each job in a child process of its own (a new process group); ``cancel``
  ends that group: the job and every worker process it started.

FnApiRunner handles EMBEDDED, LOOPBACK/EXTERNAL and SUBPROCESS_SDK
environments.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import Any, Callable, Iterable, Optional

from apache_beam.metrics.metric import MetricResults
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import (
    beam_job_api_pb2, beam_provision_api_pb2, beam_runner_api_pb2, metrics_pb2)
from apache_beam.runners.job import utils as job_utils
from apache_beam.runners.runner import PipelineResult, PipelineState
from google.protobuf import struct_pb2

_LOG = logging.getLogger(__name__)

_TERMINAL = (PipelineState.DONE, PipelineState.FAILED, PipelineState.CANCELLED,
             PipelineState.DRAINED, PipelineState.UPDATED)


class ExecutorJobFailedError(RuntimeError):
    """A job of the test executor ended FAILED; the message carries its error text."""

    def __init__(self, job_name: str, detail: str) -> None:
        super().__init__(job_name, detail)
        self.job_name = job_name
        self.detail = detail

    def __str__(self) -> str:
        return "job %s failed: %s" % (self.job_name, self.detail)


def options_values(options: PipelineOptions) -> dict[str, Any]:
    """The options that were set, by name."""
    try:
        values: dict[str, Any] = options.get_all_options(
            drop_default=True, retain_unknown_options=True)
    except argparse.ArgumentError:
        # Two registered PipelineOptions classes define the same flag (see
        # job_options._gpu_runner_options); the set values are still here.
        values = dict(options._all_options)  # pylint: disable=protected-access
    return values


def options_struct(options: PipelineOptions) -> struct_pb2.Struct:
    """``options`` as the Job API's Struct of ``beam:option:<name>:v1`` keys."""
    values = options_values(options)
    return job_utils.dict_to_struct({
        "beam:option:%s:v1" % k: (str(v) if isinstance(v, int) and not isinstance(v, bool)
                                  else v)
        for k, v in values.items() if v is not None})


def _provision_info(options: PipelineOptions, job_name: str,
                    staged_artifacts_dir: Optional[str]) -> Any:
    from beam_gpu_runner.bridge.beam import ExtendedProvisionInfo
    return ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=options_struct(options)),
        staged_artifacts_dir, job_name=job_name)


def run_on_fn_api_runner(pipeline_proto: beam_runner_api_pb2.Pipeline,
                         options: PipelineOptions, job_name: str,
                         staged_artifacts_dir: Optional[str]) -> PipelineResult:
    """Run to completion on Beam's FnApiRunner (blocking)."""
    from beam_gpu_runner.bridge.beam import FnApiRunner
    runner = FnApiRunner(
        provision_info=_provision_info(options, job_name, staged_artifacts_dir))
    result: PipelineResult = runner.run_via_runner_api(pipeline_proto, options)
    return result


class _ConditionResult:
    """State behind a condition variable: what both test results share."""

    job_name: str
    _cond: threading.Condition
    _state: str
    _error: Optional[str]

    @property
    def state(self) -> str:
        with self._cond:
            return self._state

    def wait_until_finish(self, duration: Optional[int] = None) -> Optional[str]:
        with self._cond:
            done = self._cond.wait_for(lambda: self._state in _TERMINAL,
                                       None if not duration else duration / 1000.0)
            if not done:
                return None
            if self._state == PipelineState.FAILED:
                raise ExecutorJobFailedError(self.job_name, self._error or "unknown error")
            return self._state


class ThreadResult(_ConditionResult):
    """A JobResult whose job is ``body()`` running on a background thread."""

    def __init__(self, job_name: str, body: Callable[[], PipelineResult]) -> None:
        self.job_name = job_name
        self._cond = threading.Condition()
        self._state: str = PipelineState.RUNNING
        self._error: Optional[str] = None
        self._inner: Optional[PipelineResult] = None
        self._thread = threading.Thread(target=self._run, args=(body,),
                                        name="fn-api-job-%s" % job_name, daemon=True)
        self._thread.start()

    def _run(self, body: Callable[[], PipelineResult]) -> None:
        try:
            inner = body()
            inner.wait_until_finish()
            state, error = str(inner.state), None
        except BaseException:
            inner, state, error = None, PipelineState.FAILED, traceback.format_exc()
        with self._cond:
            if self._state == PipelineState.CANCELLED:
                return  # cancelled meanwhile: the outcome is discarded
            self._inner, self._state, self._error = inner, state, error
            self._cond.notify_all()

    def cancel(self) -> Optional[str]:
        with self._cond:
            if self._state not in _TERMINAL:
                self._state = PipelineState.CANCELLED
                self._cond.notify_all()
            return self._state

    def metrics(self) -> MetricResults:
        with self._cond:
            inner = self._inner
        if inner is None:
            raise ExecutorJobFailedError(self.job_name, "no metrics: the job has not finished")
        return inner.metrics()

    def monitoring_infos(self) -> Iterable[metrics_pb2.MonitoringInfo]:
        with self._cond:
            inner = self._inner
        infos = getattr(inner, "monitoring_infos", None)
        return list(infos()) if infos is not None else []


class FnApiRunnerExecutor:
    """Each job on Beam's FnApiRunner, on a thread of the server."""

    def run(self, pipeline_proto: beam_runner_api_pb2.Pipeline,
            options: PipelineOptions, job_name: str,
            staged_artifacts_dir: Optional[str]) -> ThreadResult:
        return ThreadResult(job_name, lambda: run_on_fn_api_runner(
            pipeline_proto, options, job_name, staged_artifacts_dir))


# -- one process per job ------------------------------------------------------

_PIPELINE_FILE = "pipeline.pb"
_OPTIONS_FILE = "options.json"
_JOB_FILE = "job.json"
_RESULT_FILE = "result.json"
_METRICS_FILE = "metrics.pb"


class SubprocessResult(_ConditionResult):
    """A JobResult for a job running in a child process (its own process group)."""

    def __init__(self, job_name: str, workdir: str, proc: "subprocess.Popen[bytes]") -> None:
        self.job_name = job_name
        self.pid = proc.pid
        self._workdir = workdir
        self._proc = proc
        self._cond = threading.Condition()
        self._state: str = PipelineState.RUNNING
        self._cancelled = False
        self._error: Optional[str] = None
        self._infos: list[metrics_pb2.MonitoringInfo] = []
        threading.Thread(target=self._watch, name="job-process-%s" % job_name,
                         daemon=True).start()

    def _watch(self) -> None:
        returncode = self._proc.wait()
        state, error = PipelineState.FAILED, "job process exited with code %s" % returncode
        infos: list[metrics_pb2.MonitoringInfo] = []
        try:
            with open(os.path.join(self._workdir, _RESULT_FILE)) as f:
                outcome = json.load(f)
            state, error = outcome["state"], outcome.get("error")
            with open(os.path.join(self._workdir, _METRICS_FILE), "rb") as fb:
                infos = list(beam_job_api_pb2.MetricResults.FromString(fb.read()).attempted)
        except (OSError, ValueError, KeyError):
            pass
        # Still a group leader's children may linger (e.g. worker processes).
        self._kill_group(signal.SIGKILL)
        with self._cond:
            if self._cancelled:
                state = PipelineState.CANCELLED
            self._state, self._error, self._infos = state, error, infos
            self._cond.notify_all()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def cancel(self) -> Optional[str]:
        with self._cond:
            if self._state in _TERMINAL:
                return self._state
            self._cancelled = True
        _LOG.info("Cancelling job %s: ending process group %d", self.job_name, self.pid)
        self._kill_group(signal.SIGTERM)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill_group(signal.SIGKILL)
        return self.state

    def metrics(self) -> MetricResults:
        from apache_beam.runners.portability.portable_runner import PortableMetrics
        return PortableMetrics(beam_job_api_pb2.GetJobMetricsResponse(
            metrics=beam_job_api_pb2.MetricResults(committed=self.monitoring_infos())))

    def monitoring_infos(self) -> list[metrics_pb2.MonitoringInfo]:
        with self._cond:
            return list(self._infos)


class SubprocessFnApiRunnerExecutor:
    """Each job on Beam's FnApiRunner in a child process of its own."""

    def run(self, pipeline_proto: beam_runner_api_pb2.Pipeline,
            options: PipelineOptions, job_name: str,
            staged_artifacts_dir: Optional[str]) -> SubprocessResult:
        workdir = tempfile.mkdtemp(prefix="beam-gpu-runner-job-")
        with open(os.path.join(workdir, _PIPELINE_FILE), "wb") as fb:
            fb.write(pipeline_proto.SerializeToString())
        with open(os.path.join(workdir, _OPTIONS_FILE), "w") as f:
            json.dump(options_values(options), f, default=str)
        with open(os.path.join(workdir, _JOB_FILE), "w") as f:
            json.dump({"job_name": job_name, "staged_artifacts_dir": staged_artifacts_dir}, f)
        proc = subprocess.Popen(
            [sys.executable, "-m", "beam_gpu_runner.jobservice.testing", workdir],
            start_new_session=True)
        return SubprocessResult(job_name, workdir, proc)


def _job_process_main(workdir: str) -> int:
    """Body of a SubprocessFnApiRunnerExecutor child: run one job, write its outcome."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s job-process %(name)s: %(message)s")
    # SIGTERM (cancel) ends the process; its workers get SIGKILL from the parent.
    signal.signal(signal.SIGTERM, lambda *unused: os._exit(143))
    with open(os.path.join(workdir, _PIPELINE_FILE), "rb") as fb:
        pipeline_proto = beam_runner_api_pb2.Pipeline.FromString(fb.read())
    with open(os.path.join(workdir, _OPTIONS_FILE)) as f:
        options = PipelineOptions(**json.load(f))
    with open(os.path.join(workdir, _JOB_FILE)) as f:
        job = json.load(f)
    outcome: dict[str, Optional[str]]
    infos: list[metrics_pb2.MonitoringInfo] = []
    try:
        result = run_on_fn_api_runner(pipeline_proto, options, job["job_name"],
                                      job["staged_artifacts_dir"])
        result.wait_until_finish()
        outcome = {"state": str(result.state), "error": None}
        infos = list(result.monitoring_infos())  # type: ignore[attr-defined]
    except Exception:
        outcome = {"state": PipelineState.FAILED, "error": traceback.format_exc()}
    with open(os.path.join(workdir, _METRICS_FILE), "wb") as fb:
        fb.write(beam_job_api_pb2.MetricResults(attempted=infos).SerializeToString())
    with open(os.path.join(workdir, _RESULT_FILE), "w") as f:
        json.dump(outcome, f)
    return 0


if __name__ == "__main__":
    sys.exit(_job_process_main(sys.argv[1]))
