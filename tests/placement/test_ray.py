"""RayPlacement on a one-node local Ray cluster with 4 logical GPUs (one labelled H100).

Starts Ray once for the module (5-8 s); every test stops what it starts.
"""
from __future__ import annotations

import os
import pickle
import queue
import shutil
import signal
import sys
import tempfile
import time
from concurrent import futures
from typing import Any, Iterator, Optional

import pytest

ray = pytest.importorskip("ray")
grpc = pytest.importorskip("grpc")
psutil = pytest.importorskip("psutil")

from apache_beam.portability.api import beam_fn_api_pb2_grpc  # noqa: E402

from ray_helpers import eventually, gone, settled_environ  # noqa: E402
from beam_gpu_runner.placement.api import WorkerLaunch  # noqa: E402
from beam_gpu_runner.placement.ray import (  # noqa: E402
    RayPlacement, RayPlacementError, RayWorkerProcess)
from beam_gpu_runner.resources import runtime_context  # noqa: E402
from beam_gpu_runner.resources.requirements import StageRequirements  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(180)]

#: A stand-in harness: the env checks need a process, not a Beam worker.
SLEEPER = (sys.executable, "-c", "import time; time.sleep(600)")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    temp_dir = tempfile.mkdtemp(prefix="bgr-ray-", dir="/tmp")  # short: socket paths
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_AUTH_MODE", "disabled")
        if ray.is_initialized():
            ray.shutdown()
        started = time.monotonic()
        ray.init(num_cpus=2, num_gpus=4, resources={"accelerator_type:H100": 1},
                 include_dashboard=False, _temp_dir=temp_dir,
                 object_store_memory=80 * 2**20, log_to_driver=False)
        print("ray.init took %.1fs" % (time.monotonic() - started))
        try:
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _launch(worker_id: str, control: str = "127.0.0.1:1", logging_: str = "127.0.0.1:1",
            env: Optional[dict[str, str]] = None, **requirements: Any) -> WorkerLaunch:
    return WorkerLaunch(
        worker_id=worker_id, control_address=control, logging_address=logging_,
        pipeline_options_json='{"options": {"job_name": "ray-test"}}',
        requirements=StageRequirements(**requirements), env=env or {})






def _actor_states() -> dict[str, str]:
    from ray._private import state

    return {aid: info.get("State", "?") for aid, info in state.actors().items()}


class _ControlServicer(beam_fn_api_pb2_grpc.BeamFnControlServicer):
    """Records the worker_id each connecting SDK harness sends (as Beam's does)."""

    def __init__(self) -> None:
        self.connected: queue.Queue[Optional[str]] = queue.Queue()

    def Control(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        self.connected.put(dict(context.invocation_metadata()).get("worker_id"))
        for _ in request_iterator:   # the harness only answers requests
            pass
        return
        yield  # a generator: a response stream


class _LoggingServicer(beam_fn_api_pb2_grpc.BeamFnLoggingServicer):
    def Logging(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for _ in request_iterator:
            pass
        return
        yield


@pytest.fixture
def fn_api_server() -> Iterator[tuple[int, _ControlServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    control = _ControlServicer()
    beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(control, server)
    beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(_LoggingServicer(), server)
    port = server.add_insecure_port("[::]:0")   # workers may be on other hosts
    server.start()
    try:
        yield port, control
    finally:
        server.stop(0)


def test_sdk_harness_connects_back_to_control_service(ray_cluster, fn_api_server) -> None:
    port, control = fn_api_server
    placement = RayPlacement(start_timeout=60)
    host = placement.advertise_host()
    assert host not in ("localhost", "127.0.0.1", "")
    assert host == ray.util.get_node_ip_address()
    address = "%s:%d" % (host, port)
    started = time.monotonic()
    worker = placement.start_worker(_launch(
        "ray-w-connect", control=address, logging_=address,
        gpu_count=1, accelerator_type="nvidia-h100"))
    actor_start = time.monotonic() - started
    try:
        assert worker.is_alive(), worker.exit_description()
        assert worker.exit_description() == "running"
        assert len(worker.gpu_ids) == 1
        assert control.connected.get(timeout=60) == "ray-w-connect"
        print("actor start %.2fs, harness connected after %.2fs"
              % (actor_start, time.monotonic() - started))
        assert worker.is_alive(), worker.exit_description()
        harness = psutil.Process(worker.harness_pid)
        assert "beam_gpu_runner.placement.harness" in harness.cmdline()
    finally:
        worker.stop(timeout=10)
    assert not worker.is_alive()
    assert "stopped" in worker.exit_description()
    eventually(lambda: gone(worker.harness_pid), 10, "the harness to end")
    placement.close()
    assert ray.is_initialized(), "close() must not shut down a Ray it did not start"


def test_two_workers_get_distinct_gpus_in_their_env(ray_cluster) -> None:
    placement = RayPlacement(harness_command=SLEEPER)
    try:
        a = placement.start_worker(_launch("ray-w-a", gpu_count=1, env={"EXTRA": "x"}))
        b = placement.start_worker(_launch("ray-w-b", gpu_count=1))
        assert len(a.gpu_ids) == len(b.gpu_ids) == 1
        assert a.gpu_ids != b.gpu_ids
        seen = []
        for worker in (a, b):
            env = settled_environ(worker.harness_pid)
            assert env["CUDA_VISIBLE_DEVICES"] == worker.gpu_ids[0]
            assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
            assert env["WORKER_ID"] == worker.worker_id
            assert env["CONTROL_API_SERVICE_DESCRIPTOR"] == 'url: "127.0.0.1:1"\n'
            assert env["PIPELINE_OPTIONS"] == '{"options": {"job_name": "ray-test"}}'
            ctx = runtime_context.from_env(env)
            assert ctx.worker_id == worker.worker_id
            gpus = ctx.gpus()
            assert [g.get_property("index") for g in gpus] == list(worker.gpu_ids)
            assert gpus[0].get_property("name") == "ray-gpu-%s" % worker.gpu_ids[0]
            assert ctx.device_ordinal(worker.gpu_ids[0]) == 0
            seen.append(worker.gpu_ids[0])
        assert settled_environ(a.harness_pid)["EXTRA"] == "x"
        assert len(set(seen)) == 2
    finally:
        placement.close()


def test_fractional_cpu_only_and_multi_gpu_workers(ray_cluster) -> None:
    placement = RayPlacement(harness_command=SLEEPER)
    try:
        halves = [placement.start_worker(_launch("ray-w-half-%d" % i, gpu_count=0.5))
                  for i in range(2)]
        cpu = placement.start_worker(_launch("ray-w-cpu"))
        for worker in halves:
            assert worker.request.num_gpus == 0.5
            env = settled_environ(worker.harness_pid)
            assert env["CUDA_VISIBLE_DEVICES"] == worker.gpu_ids[0]
            assert len(runtime_context.from_env(env).gpus()) == 1
        env = settled_environ(cpu.harness_pid)
        assert cpu.gpu_ids == ()
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert runtime_context.from_env(env).gpus() == []
        pair = placement.start_worker(_launch("ray-w-pair", gpu_count=2,
                                              accelerator_type="nvidia-h100"))
        assert pair.request.uses_placement_group
        assert len(set(pair.gpu_ids)) == 2
        env = settled_environ(pair.harness_pid)
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(sorted(pair.gpu_ids, key=int))
    finally:
        placement.close()


def test_impossible_requests_fail_fast_with_a_clear_error(ray_cluster) -> None:
    placement = RayPlacement(harness_command=SLEEPER, start_timeout=30)
    try:
        before = set(_actor_states())
        with pytest.raises(RayPlacementError) as too_many:
            placement.start_worker(_launch("ray-w-eight", gpu_count=8))
        # Refused before any actor was asked for (not after start_timeout).
        assert not set(_actor_states()) - before
        message = str(too_many.value)
        assert "ray-w-eight" in message and "gpu=8" in message
        assert "num_gpus=8" in message and "GPU=4" in message
        assert "no node of the cluster can ever satisfy it" in message
        assert too_many.value.worker_id == "ray-w-eight"
        again = pickle.loads(pickle.dumps(too_many.value))
        assert str(again) == message and again.worker_id == "ray-w-eight"

        with pytest.raises(RayPlacementError) as wrong_type:
            placement.start_worker(_launch("ray-w-a100", gpu_count=1,
                                           accelerator_type="nvidia-tesla-a100"))
        message = str(wrong_type.value)
        assert "accelerator_type=A100" in message and "['H100']" in message
        assert not set(_actor_states()) - before
        assert placement.workers() == []
    finally:
        placement.close()


def test_unschedulable_request_times_out_when_not_failing_fast(ray_cluster) -> None:
    placement = RayPlacement(harness_command=SLEEPER, start_timeout=3,
                             fail_fast_infeasible=False)
    try:
        before = set(_actor_states())
        with pytest.raises(RayPlacementError) as error:
            placement.start_worker(_launch("ray-w-wait", gpu_count=1,
                                           accelerator_type="nvidia-a100"))
        assert "its actor did not start within 3s" in str(error.value)
        assert "GPU=4" in str(error.value) and "['H100']" in str(error.value)
        with pytest.raises(RayPlacementError, match="placement group was not ready"):
            placement.start_worker(_launch("ray-w-wait-pg", gpu_count=6))
        # ray.kill is asynchronous: the pending actor is DEAD soon, not at once.
        eventually(lambda: all(st == "DEAD" for aid, st in _actor_states().items()
                               if aid not in before), 30, "the unplaced actor to be dead")
    finally:
        placement.close()


def test_killed_harness_and_killed_actor_are_not_alive(ray_cluster) -> None:
    placement = RayPlacement(harness_command=SLEEPER)
    try:
        worker = placement.start_worker(_launch("ray-w-victim", gpu_count=1))
        assert worker.is_alive()
        os.kill(worker.harness_pid, signal.SIGKILL)
        eventually(lambda: not worker.is_alive(), 10, "the worker to be seen dead")
        assert "killed by signal 9" in worker.exit_description()
        assert "ray-w-victim" in worker.exit_description()
        assert worker not in placement.workers()

        other = placement.start_worker(_launch("ray-w-actor-victim", gpu_count=1))
        ray.kill(other._actor, no_restart=True)   # the actor process dies
        eventually(lambda: not other.is_alive(), 30, "the dead actor to be seen")
        assert other.exit_description().startswith("actor died")
        assert other.wait(1) == -signal.SIGKILL
        assert "log on node" in other.log_tail()
        # The harness goes with its actor (PR_SET_PDEATHSIG), no orphan.
        eventually(lambda: gone(other.harness_pid), 10, "the orphaned harness to end")
    finally:
        placement.close()


def test_harness_exit_is_reported_with_its_log_and_frees_the_gpu(ray_cluster) -> None:
    crash = (sys.executable, "-c",
             "import os, sys; print('boom from', os.environ['WORKER_ID']); sys.exit(3)")
    placement = RayPlacement(harness_command=crash)
    try:
        worker = placement.start_worker(_launch("ray-w-crash", gpu_count=4))
        assert worker.wait(20) == 3
        assert not worker.is_alive()
        assert worker.exit_description().startswith("harness exit code 3")
        assert "boom from ray-w-crash" in worker.log_tail()
        assert worker.started.log_path and worker.started.log_path.endswith(
            "ray-w-crash.log")
        # The dead harness's actor no longer holds the 4 GPUs.
        eventually(lambda: ray.available_resources().get("GPU") == 4, 10,
                    "the GPUs to be free again")
        worker.stop()   # harmless after the end
    finally:
        placement.close()


def test_wait_times_out_while_running_and_work_dir_is_removed(ray_cluster) -> None:
    placement = RayPlacement(harness_command=SLEEPER)
    try:
        worker = placement.start_worker(_launch("ray-w-wait", gpu_count=1))
        assert worker.wait(0.5) is None       # still running: wait() gives up
        work_dir = settled_environ(worker.harness_pid)["SEMI_PERSISTENT_DIRECTORY"]
        assert os.path.isdir(work_dir)
        worker.stop(timeout=5)
        assert worker.wait(1) == -signal.SIGTERM
        assert "stopped, harness killed by signal 15" in worker.exit_description()
        assert not os.path.exists(work_dir)
    finally:
        placement.close()


def test_close_leaves_no_actors_or_processes(ray_cluster) -> None:
    before = set(_actor_states())
    placement = RayPlacement(harness_command=SLEEPER)
    workers: list[RayWorkerProcess] = [
        placement.start_worker(_launch("ray-w-close-%d" % i, gpu_count=1))
        for i in range(2)]
    pids = [w.harness_pid for w in workers]
    assert all(not gone(pid) for pid in pids)
    placement.close()
    assert all(not w.is_alive() for w in workers)
    assert all("stopped by close()" in w.exit_description() for w in workers)
    eventually(lambda: all(gone(pid) for pid in pids), 10, "harnesses to end")
    eventually(lambda: all(st == "DEAD" for aid, st in _actor_states().items()
                            if aid not in before), 10, "actors to be dead")
    with pytest.raises(RayPlacementError, match="after close"):
        placement.start_worker(_launch("ray-w-late", gpu_count=1))
    eventually(lambda: ray.available_resources().get("GPU") == 4, 10,
                "all 4 GPUs to be free again")


def test_gpu_runner_runs_a_hinted_stage_on_ray_workers(ray_cluster) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that

    from beam_gpu_runner.runner import GpuRunner

    def check(rows: list[tuple[Optional[str], tuple[str, ...], Optional[str], int]]) -> None:
        assert rows, "no output"
        for worker_id, indexes, visible, pid in rows:
            assert worker_id and pid != os.getpid()
            assert len(indexes) == 1 and visible == indexes[0], rows
        by_worker: dict[Optional[str], set[tuple[str, ...]]] = {}
        for worker_id, indexes, _, _ in rows:
            by_worker.setdefault(worker_id, set()).add(indexes)
        assert all(len(v) == 1 for v in by_worker.values()), by_worker
        gpus = [next(iter(v)) for v in by_worker.values()]
        assert len(set(gpus)) == len(gpus), "two workers share a GPU: %s" % by_worker

    def report(_: int) -> tuple[Optional[str], tuple[str, ...], Optional[str], int]:
        # Defined here so that it is pickled by value: Ray's workers cannot
        # import this test module.
        from beam_gpu_runner.resources.runtime_context import runtime_context as ctx_of

        ctx = ctx_of()
        return (ctx.worker_id, tuple(g.get_property("index") or "" for g in ctx.gpus()),
                os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid())

    placement = RayPlacement()
    try:
        with beam.Pipeline(runner=GpuRunner(placement=placement),
                           options=PipelineOptions(["--num_workers=2"])) as p:
            rows = (p | beam.Create(range(40))
                    | beam.Map(report).with_resource_hints(
                        accelerator="type:nvidia-h100;count:1")
                    | beam.Distinct())
            assert_that(rows, check)
    finally:
        placement.close()
    eventually(lambda: ray.available_resources().get("GPU") == 4, 10,
                "the job's GPUs to be free again")


def test_mnist_streaming_runs_on_ray_placement(ray_cluster, tmp_path) -> None:
    from beam_gpu_runner.pipelines import mnist_streaming

    config = mnist_streaming.StreamingConfig(
        rate=0, num_images=2000, output=str(tmp_path / "preds"))
    summary = mnist_streaming.run(config, ["--placement=ray", "--num_workers=2"])
    assert summary.images == 2000
    # Offline accuracy of the bundled model on the first 2,000 test images.
    from beam_gpu_runner.transforms import bundled
    from beam_gpu_runner.transforms.classifier import evaluate
    from beam_gpu_runner.transforms.idx import read_mnist
    data = read_mnist(bundled.test_images_path(), bundled.test_labels_path())
    assert summary.correct == evaluate(
        bundled.default_model_path(), data.images[:2000], data.labels[:2000]).correct
    eventually(lambda: ray.available_resources().get("GPU") == 4, 10,
                "the job's GPUs to be free again")
