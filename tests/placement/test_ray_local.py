"""RayPlacement starting its own Ray declares the devices the runner's drivers report.

Each test starts (and its placement shuts down) a local Ray of its own, with
the testing driver's fake GPUs as the node's GPUs; ~5 s each.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Iterator, Optional

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from ray_helpers import eventually, settled_environ  # noqa: E402
from beam_gpu_runner.drivers.testing import (  # noqa: E402
    DEFAULT_DEVICE_NAME, TestingDriver, fake_uuid)
from beam_gpu_runner.placement.api import WorkerLaunch  # noqa: E402
from beam_gpu_runner.placement.ray import RayPlacement, RayPlacementError  # noqa: E402
from beam_gpu_runner.resources import runtime_context  # noqa: E402
from beam_gpu_runner.resources.api import ResourceInfo  # noqa: E402
from beam_gpu_runner.resources.requirements import StageRequirements  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

SLEEPER = (sys.executable, "-c", "import time; time.sleep(600)")


@pytest.fixture
def no_ray() -> Iterator[str]:
    """No Ray in this process, none to join (no RAY_ADDRESS, a Ray temp folder
    of our own without a `ray start` record); yields that folder."""
    temp_dir = tempfile.mkdtemp(prefix="bgr-rl-", dir="/tmp")  # short: socket paths
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_TMPDIR", temp_dir)
        mp.delenv("RAY_ADDRESS", raising=False)
        if ray.is_initialized():
            ray.shutdown()
        try:
            yield temp_dir
        finally:
            if ray.is_initialized():
                ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _fakes(n: int) -> list[ResourceInfo]:
    """What the testing driver reports for ``n`` fake GPUs."""
    infos = TestingDriver(n).all_resource_info()
    assert all(isinstance(info, ResourceInfo) for info in infos)
    return [info for info in infos if isinstance(info, ResourceInfo)]


def _launch(worker_id: str, **requirements: Any) -> WorkerLaunch:
    return WorkerLaunch(
        worker_id=worker_id, control_address="127.0.0.1:1", logging_address="127.0.0.1:1",
        pipeline_options_json="{}", requirements=StageRequirements(**requirements))


def test_own_ray_declares_fake_gpus_and_actors_see_their_properties(no_ray: str) -> None:
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    asked: list[int] = []

    def local_gpus() -> list[ResourceInfo]:
        asked.append(1)
        return _fakes(2)

    placement = RayPlacement(
        harness_command=SLEEPER, start_timeout=60, local_gpus=local_gpus,
        init_kwargs={"num_cpus": 2, "include_dashboard": False,
                     "object_store_memory": 80 * 2**20, "_temp_dir": no_ray})
    assert asked == [], "the devices are read only when Ray starts"
    try:
        a = placement.start_worker(_launch("ray-l-a", gpu_count=1,
                                           accelerator_type="nvidia-h100"))
        b = placement.start_worker(_launch("ray-l-b", gpu_count=1,
                                           accelerator_type="nvidia-h100"))
        assert asked == [1]
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == before, "restored after ray.init"
        resources = ray.cluster_resources()
        assert resources["GPU"] == 2 and resources["accelerator_type:H100"] == 1
        assert placement.declared is not None
        assert placement.declared.ray_ids == ("0", "1")
        uuids = []
        for worker in (a, b):
            env = settled_environ(worker.harness_pid)
            ctx = runtime_context.from_env(env)
            (gpu,) = ctx.gpus()
            # The driver's description, not a bare Ray id: a testing device says so.
            assert gpu.get_property("index") == worker.gpu_ids[0]
            assert gpu.get_property("uuid") == fake_uuid(int(worker.gpu_ids[0]))
            assert gpu.get_property("name") == DEFAULT_DEVICE_NAME
            assert env["CUDA_VISIBLE_DEVICES"] == worker.gpu_ids[0]
            assert ctx.device_ordinal(worker.gpu_ids[0]) == 0
            uuids.append(gpu.get_property("uuid"))
        assert sorted(uuids) == [fake_uuid(0), fake_uuid(1)]

        # Beyond what the drivers report: refused at once, saying where the GPUs came from.
        with pytest.raises(RayPlacementError) as error:
            placement.start_worker(_launch("ray-l-three", gpu_count=3))
        message = str(error.value)
        assert "no node of the cluster can ever satisfy it" in message
        assert "local Ray started with the devices the runner's drivers report" in message
        assert "external-resource.gpu" in message and "--ray_address" in message
        with pytest.raises(RayPlacementError, match="accelerator_type=A100"):
            placement.start_worker(_launch("ray-l-a100", gpu_count=1,
                                           accelerator_type="nvidia-tesla-a100"))
    finally:
        placement.close()
    assert not ray.is_initialized(), "close() shuts down the Ray it started"


def test_no_devices_reported_declares_no_gpus(no_ray: str) -> None:
    placement = RayPlacement(
        harness_command=SLEEPER, local_gpus=lambda: [],
        init_kwargs={"num_cpus": 2, "include_dashboard": False,
                     "object_store_memory": 80 * 2**20, "_temp_dir": no_ray})
    try:
        cpu = placement.start_worker(_launch("ray-l-cpu"))
        assert cpu.gpu_ids == ()
        assert ray.cluster_resources().get("GPU", 0) == 0
        assert placement.matching_devices(StageRequirements(gpu_count=1)) == 0
        with pytest.raises(RayPlacementError, match=r"no GPUs \(the runner's drivers "
                                                    r"report none\)"):
            placement.start_worker(_launch("ray-l-gpu", gpu_count=1))
    finally:
        placement.close()


def test_pipeline_with_fake_gpus_runs_on_a_local_ray(no_ray: str) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that

    from beam_gpu_runner.testing import gpu_test_args

    Row = tuple[Optional[str], tuple[tuple[str, str, str], ...], Optional[str], str, int]

    def check(rows: list[Row]) -> None:
        assert len(rows) == 8, rows   # one per key
        by_worker: dict[Optional[str], set[tuple[tuple[str, str, str], ...]]] = {}
        for worker_id, gpus, visible, parent, _ in rows:
            assert worker_id, rows
            assert len(gpus) == 1, "an element saw %s" % (gpus,)
            index, uuid, name = gpus[0]
            assert uuid.startswith("GPU-testing-") and name == "NVIDIA H100 80GB HBM3", gpus
            assert visible == index, (visible, index)
            assert parent.startswith("ray::HarnessActor"), parent   # a Ray actor's child
            by_worker.setdefault(worker_id, set()).add(gpus)
        assert all(len(seen) == 1 for seen in by_worker.values()), by_worker
        uuids = [next(iter(seen))[0][1] for seen in by_worker.values()]
        assert len(set(uuids)) == len(uuids), "two workers share a device: %s" % by_worker

    def report(kv: tuple[int, list[int]]) -> Row:
        # Defined here so that it is pickled by value.
        import os as os_
        import psutil as psutil_
        from beam_gpu_runner.resources.runtime_context import runtime_context as ctx_of

        ctx = ctx_of()
        return (ctx.worker_id,
                tuple((g.get_property("index") or "", g.get_property("uuid") or "",
                       g.get_property("name") or "") for g in ctx.gpus()),
                os_.environ.get("CUDA_VISIBLE_DEVICES"),
                " ".join(psutil_.Process(os_.getppid()).cmdline()), kv[0])

    args = gpu_test_args(num_devices=2) + ["--placement=ray", "--num_workers=2"]
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        rows = (p
                | beam.Create(range(40))
                | beam.Map(lambda x: (x % 8, x))
                | beam.GroupByKey()
                | beam.Map(report).with_resource_hints(accelerator="type:nvidia-h100;count:1"))
        assert_that(rows, check)
    eventually(lambda: not ray.is_initialized(), 30, "the job's Ray to be shut down")
