"""RayPlacement on a two-node ``ray.cluster_utils.Cluster`` (2 logical GPUs per node).

The placement connects itself (``address=cluster.address``), so ``close()``
also ends its Ray connection.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any, Iterator

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from ray.cluster_utils import Cluster  # noqa: E402

from ray_helpers import eventually, gone, settled_environ  # noqa: E402
from beam_gpu_runner.placement.api import WorkerLaunch  # noqa: E402
from beam_gpu_runner.placement.ray import RayPlacement, RayPlacementError  # noqa: E402
from beam_gpu_runner.resources import runtime_context  # noqa: E402
from beam_gpu_runner.resources.requirements import StageRequirements  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(180)]

SLEEPER = (sys.executable, "-c", "import time; time.sleep(600)")


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    temp_dir = tempfile.mkdtemp(prefix="bgr-rayc-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_AUTH_MODE", "disabled")
        # Cluster writes <RAY_TMPDIR>/ray/ray_current_cluster: keep it in ours.
        mp.setenv("RAY_TMPDIR", temp_dir)
        os.makedirs(os.path.join(temp_dir, "ray"))
        if ray.is_initialized():
            ray.shutdown()
        node_args: dict[str, Any] = {
            "num_cpus": 2, "num_gpus": 2, "object_store_memory": 80 * 2**20,
            "temp_dir": os.path.join(temp_dir, "ray")}
        cluster = Cluster()
        try:
            cluster.add_node(**dict(node_args, include_dashboard=False))   # the head
            cluster.add_node(**node_args)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _launch(worker_id: str, **requirements: Any) -> WorkerLaunch:
    return WorkerLaunch(
        worker_id=worker_id, control_address="127.0.0.1:1",
        logging_address="127.0.0.1:1", pipeline_options_json="{}",
        requirements=StageRequirements(**requirements))






def test_multi_gpu_workers_pack_on_one_node_and_use_both_nodes(two_nodes: Cluster) -> None:
    placement = RayPlacement(address=two_nodes.address, harness_command=SLEEPER,
                             start_timeout=20)
    try:
        started = time.monotonic()
        first = placement.start_worker(_launch("ray-c-first", gpu_count=2))
        print("connect + first count:2 worker %.1fs" % (time.monotonic() - started))
        second = placement.start_worker(_launch("ray-c-second", gpu_count=2))
        assert first.request.uses_placement_group
        for worker in (first, second):
            assert sorted(worker.gpu_ids) == ["0", "1"]   # a whole node's GPUs
            env = settled_environ(worker.harness_pid)
            assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
            ctx = runtime_context.from_env(env)
            assert [g.get_property("index") for g in ctx.gpus()] == ["0", "1"]
            assert ctx.device_ordinal("1") == 1
        assert first.node_id != second.node_id, "the two workers share a node"
        assert {first.node_id, second.node_id} == {
            n["NodeID"] for n in ray.nodes() if n["Alive"]}

        # 3 GPUs exist in the cluster (4) but on no single node: refused at once.
        with pytest.raises(RayPlacementError, match="no node of the cluster") as error:
            placement.start_worker(_launch("ray-c-three", gpu_count=3))
        assert "GPU=2" in str(error.value) and "ray-c-three" in str(error.value)

        # All GPUs are taken: a feasible request waits, then fails at the bound.
        placement.start_timeout = 2
        with pytest.raises(RayPlacementError, match="did not start within 2s"):
            placement.start_worker(_launch("ray-c-waits", gpu_count=1))

        first.stop()
        placement.start_timeout = 20
        third = placement.start_worker(_launch("ray-c-third", gpu_count=1))
        assert third.node_id == first.node_id
        pids = [second.harness_pid, third.harness_pid]
    finally:
        placement.close()
    assert not ray.is_initialized(), "close() must shut down the Ray it connected"
    eventually(lambda: all(gone(pid) for pid in pids), 15, "harnesses to end")
