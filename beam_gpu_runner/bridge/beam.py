"""Every Beam internal GpuRunner relies on, imported here and nowhere else.

Beam's Python runner pieces (``fn_api_runner``, the SDK harness internals,
a few private names) are not a public API, and apache-beam is pinned to a
narrow range because of them. Modules outside ``beam_gpu_runner.bridge`` never
import them directly (``tests/test_layering.py`` checks it); they use the names
below. Each entry of ``INTERNALS`` says where a name lives, who uses it and
why, and ``tests/bridge/test_canaries.py`` checks every one against the
installed Beam: a Beam upgrade that moves one fails with a message naming it
and the Beam version, instead of as hundreds of failing pipeline tests.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Optional

import apache_beam
from apache_beam.metrics import monitoring_infos
from apache_beam.runners.portability.fn_api_runner import execution as beam_execution
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import bundle_processor
from apache_beam.runners.worker import data_plane
from apache_beam.runners.worker import log_handler
from apache_beam.testing import test_stream as beam_test_stream

BEAM_VERSION = apache_beam.__version__


@dataclass(frozen=True)
class Internal:
    """One Beam internal: ``module`` + dotted ``name``; ``instance_attr`` for an
    attribute set on instances (checked in the class's source)."""

    module: str
    name: str
    used_by: str
    why: str
    instance_attr: Optional[str] = None

    def check(self) -> Optional[str]:
        """None when the installed Beam has it, else what is missing."""
        where = "%s.%s" % (self.module, self.name)
        try:
            value: Any = importlib.import_module(self.module)
            for part in self.name.split("."):
                value = getattr(value, part)
        except (ImportError, AttributeError) as exc:
            return "Beam %s has no %s (%s): used by %s for %s" % (
                BEAM_VERSION, where, exc, self.used_by, self.why)
        if self.instance_attr is not None:
            try:
                source = inspect.getsource(value)
            except (OSError, TypeError) as exc:
                return "Beam %s: cannot read the source of %s to find %s (%s)" % (
                    BEAM_VERSION, where, self.instance_attr, exc)
            if "self.%s" % self.instance_attr not in source:
                return "Beam %s's %s no longer sets self.%s: used by %s for %s" % (
                    BEAM_VERSION, where, self.instance_attr, self.used_by, self.why)
        return None


_TR = "apache_beam.runners.portability.fn_api_runner.translations"
_EX = "apache_beam.runners.portability.fn_api_runner.execution"
_FR = "apache_beam.runners.portability.fn_api_runner.fn_runner"
_WH = "apache_beam.runners.portability.fn_api_runner.worker_handlers"
_BP = "apache_beam.runners.worker.bundle_processor"
_DP = "apache_beam.runners.worker.data_plane"

#: Every Beam internal used anywhere in the runner (the canaries check them).
INTERNALS: tuple[Internal, ...] = (
    # fusion (preprocess/, bridge/context.py)
    Internal(_TR, "Stage", "preprocess, bridge", "fused stages and their transforms"),
    Internal(_TR, "TransformContext", "preprocess", "the fusion phases' context"),
    Internal(_TR, "create_and_optimize_stages", "preprocess/fusion.py",
             "running Beam's fusion phases"),
    *(Internal(_TR, phase, "preprocess/fusion.py", "one of Beam's fusion phases")
      for phase in ("annotate_downstream_side_inputs", "fix_side_input_pcoll_coders",
                    "pack_combiners", "lift_combiners", "expand_sdf", "expand_gbk",
                    "sink_flattens", "greedily_fuse", "read_to_impulse",
                    "impulse_to_input", "sort_stages",
                    "add_impulse_to_dangling_transforms", "setup_timer_mapping",
                    "populate_data_channel_coders")),
    Internal(_TR, "IMPULSE_BUFFER", "preprocess, bridge", "the impulse buffer id"),
    Internal(_TR, "create_buffer_id", "preprocess, bridge", "buffer ids of data channels"),
    Internal(_TR, "split_buffer_id", "bridge/buffers.py", "kinds of buffer ids"),
    Internal(_TR, "unique_name", "preprocess", "fresh transform/PCollection ids"),
    Internal(_TR, "union", "preprocess", "must_follow sets of new stages"),
    Internal(_TR, "PAR_DO_URNS", "preprocess", "which transforms are ParDos"),
    # the execution context (bridge/context.py, bridge/fnapi.py)
    Internal(_EX, "FnApiRunnerExecutionContext", "bridge/context.py",
             "coders, windowing and side-input state of a job"),
    Internal(_EX, "FnApiRunnerExecutionContext.setup", "bridge/context.py",
             "pointing data channels at the job's endpoints"),
    Internal(_EX, "FnApiRunnerExecutionContext.commit_side_inputs_to_state",
             "bridge/context.py", "side inputs served by the state API"),
    Internal(_EX, "FnApiRunnerExecutionContext", "bridge/context.py",
             "side inputs of each producing stage",
             instance_attr="side_input_descriptors_by_stage"),
    Internal(_EX, "FnApiRunnerExecutionContext", "bridge/context.py",
             "the buffers side-input commits read", instance_attr="pcoll_buffers"),
    Internal(_EX, "FnApiRunnerExecutionContext", "bridge/context.py",
             "the runner-safe coders", instance_attr="safe_coders"),
    Internal(_EX, "FnApiRunnerExecutionContext", "bridge/context.py",
             "the safe windowing strategies", instance_attr="safe_windowing_strategies"),
    Internal(_EX, "FnApiRunnerExecutionContext", "bridge/context.py",
             "the impulse bundles Beam queues at setup", instance_attr="queues"),
    Internal(_EX, "FnApiRunnerExecutionContext", "bridge/context.py",
             "which buffer each data input reads",
             instance_attr="input_transform_to_buffer_id"),
    Internal(_EX, "FnApiRunnerExecutionContext.bundle_manager_for", "bridge/context.py",
             "each stage's process bundle descriptor and coders"),
    Internal(_EX, "BundleContextManager", "bridge/context.py",
             "a stage's descriptor, coders and expected outputs"),
    Internal(_EX, "BundleContextManager.get_input_coder_impl", "bridge", "data input coders"),
    Internal(_EX, "BundleContextManager.get_timer_coder_impl", "bridge", "timer coders"),
    Internal(_EX, "BundleContextManager.input_for", "bridge/outcome.py",
             "which data input an SDF residual goes back to"),
    Internal(_EX, "ListBuffer", "bridge", "encoded element chunks Beam's helpers take"),
    Internal(_EX, "GroupingBuffer", "bridge/grouped.py",
             "batch GroupByKey input grouped by key"),
    Internal(_EX, "GroupingBuffer", "bridge/grouped.py",
             "merging groups of several producers", instance_attr="_table"),
    Internal(_EX, "GroupingBuffer", "bridge/grouped.py",
             "decoding a message's keyed values", instance_attr="_pre_grouped_coder"),
    Internal(_EX, "GroupingBuffer", "bridge/grouped.py",
             "encoding groups read back from spill files",
             instance_attr="_post_grouped_coder"),
    Internal(_EX, "GroupingBuffer", "bridge/grouped.py",
             "windowed groups and trigger firing", instance_attr="_windowing"),
    Internal(_EX, "GroupingBuffer", "bridge/grouped.py",
             "grouping by encoded key", instance_attr="_key_coder"),
    # runner pieces (runner.py, preprocess/requirements.py, bridge/fnapi.py)
    Internal(_FR, "FnApiRunner._validate_requirements", "preprocess/requirements.py",
             "FnApiRunner's pipeline requirement checks"),
    Internal(_FR, "FnApiRunner._check_requirements", "preprocess/requirements.py",
             "FnApiRunner's pipeline requirement checks"),
    Internal(_FR, "FnApiRunner.resolve_any_environments", "runner.py",
             "resolving ANY environments"),
    Internal(_FR, "FnApiRunner.get_cache_token_generator", "bridge/fnapi.py",
             "state cache tokens of bundles"),
    Internal(_FR, "FnApiRunner", "jobservice/testing.py",
             "Beam's own runner behind the job server's test executor"),
    Internal(_FR, "ExtendedProvisionInfo", "runner.py, jobservice",
             "provision info with staged artifacts"),
    Internal(_FR, "FnApiMetrics", "execution/pipeline_result.py",
             "MetricResults from monitoring infos"),
    # the Fn API services and workers (bridge/workers.py, workers/)
    Internal(_WH, "GrpcServer", "bridge/workers.py", "a job's Fn API gRPC services"),
    Internal(_WH, "StateServicer", "bridge/workers.py", "the state API (side inputs, state)"),
    Internal(_WH, "WorkerHandler.create", "workers/factory.py",
             "EXTERNAL/LOOPBACK workers started by the client's pool"),
    Internal(_WH, "GrpcWorkerHandler", "workers/handler.py", "our worker process handler"),
    Internal(_WH, "BeamFnControlServicer.STARTED_STATE", "bridge/workers.py",
             "whether a worker connected"),
    Internal(_WH, "ControlConnection", "bridge/workers.py", "connection state",
             instance_attr="_state"),
    Internal(_WH, "ControlConnection", "bridge/workers.py", "pending requests",
             instance_attr="_futures_by_id"),
    Internal(_WH, "ControlConnection.push", "bridge/fnapi.py", "control requests"),
    Internal(_WH, "ControlConnection.abort", "bridge/workers.py", "failing pending requests"),
    Internal(_DP, "_GrpcDataChannel._enqueue_to_send", "bridge/fnapi.py",
             "bundle input sent as whole Data messages, not copied through a stream"),
    # the SDK harness (bridge/harness.py, workers/logs.py)
    Internal(_BP, "DATA_INPUT_URN", "preprocess, bridge", "data input transforms"),
    Internal(_BP, "DATA_OUTPUT_URN", "preprocess, bridge", "data output transforms"),
    Internal(_DP, "SizeBasedBufferingClosableOutputStream", "bridge/harness.py",
             "the output flush size our workers use"),
    Internal(_DP, "ClosableOutputStream.create", "bridge/harness.py",
             "looks the flush class up by name when called"),
    Internal("apache_beam.runners.worker.sdk_worker_main", "main", "bridge/harness.py",
             "the SDK harness entry point"),
    Internal("apache_beam.runners.worker.worker_id_interceptor",
             "WorkerIdInterceptor._worker_id", "bridge/harness.py",
             "the worker id Beam's log handler sends, read from WORKER_ID only at "
             "import: set again for each job of a reused worker"),
    Internal("apache_beam.runners.worker.log_handler", "LOGENTRY_TO_LOG_LEVEL_MAP",
             "workers/logs.py", "worker log levels"),
    # private names elsewhere in Beam
    Internal("apache_beam.metrics.monitoring_infos", "_decode_gauge", "bridge/metrics.py",
             "merging gauges of many bundles"),
    Internal("apache_beam.testing.test_stream", "_TimingEventGenerator",
             "preprocess/reverse_test_stream.py", "ReverseTestStream on the SDK harness"),
    Internal("apache_beam.testing.test_stream", "_TestStreamFormatter",
             "preprocess/reverse_test_stream.py", "ReverseTestStream on the SDK harness"),
)


# ---- the names other layers use -------------------------------------------------

Stage = translations.Stage
TransformContext = translations.TransformContext
IMPULSE_BUFFER: bytes = translations.IMPULSE_BUFFER
PAR_DO_URNS = translations.PAR_DO_URNS
DATA_INPUT_URN: str = bundle_processor.DATA_INPUT_URN
DATA_OUTPUT_URN: str = bundle_processor.DATA_OUTPUT_URN
create_buffer_id = translations.create_buffer_id
split_buffer_id = translations.split_buffer_id
unique_name = translations.unique_name
union = translations.union
ExtendedProvisionInfo = fn_runner.ExtendedProvisionInfo
FnApiRunner = fn_runner.FnApiRunner
FnApiMetrics = fn_runner.FnApiMetrics
LOGENTRY_TO_LOG_LEVEL_MAP = log_handler.LOGENTRY_TO_LOG_LEVEL_MAP
TimingEventGenerator = beam_test_stream._TimingEventGenerator
TestStreamFormatter = beam_test_stream._TestStreamFormatter
decode_gauge = monitoring_infos._decode_gauge

#: Beam's fusion phases, by name, for preprocess/fusion.py.
PHASES = {name: getattr(translations, name) for name in (
    "annotate_downstream_side_inputs", "fix_side_input_pcoll_coders", "pack_combiners",
    "lift_combiners", "expand_sdf", "expand_gbk", "sink_flattens", "greedily_fuse",
    "read_to_impulse", "impulse_to_input", "sort_stages",
    "add_impulse_to_dangling_transforms", "setup_timer_mapping",
    "populate_data_channel_coders")}
create_and_optimize_stages = translations.create_and_optimize_stages


def check_requirements(pipeline_proto: Any, checked: Any) -> None:
    """FnApiRunner's requirement checks (``checked``: the proto its
    ``_check_requirements`` judges, e.g. without runner primitives)."""
    checker = fn_runner.FnApiRunner()
    checker._validate_requirements(pipeline_proto)
    checker._check_requirements(checked)


def resolve_any_environments(pipeline_proto: Any) -> Any:
    return fn_runner.FnApiRunner().resolve_any_environments(pipeline_proto)


def data_channel_send(channel: Any) -> Any:
    """The send queue of a worker's data channel on the runner side (Beam's
    ``_GrpcDataChannel``): takes one ``Elements.Data`` message."""
    return channel._enqueue_to_send


def cache_token_generator() -> Any:
    """Beam's generator of state cache tokens for ProcessBundle requests."""
    return fn_runner.FnApiRunner.get_cache_token_generator(static=False)


__all__ = ["BEAM_VERSION", "INTERNALS", "Internal", "Stage", "TransformContext"]
