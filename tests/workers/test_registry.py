"""A job's Fn API services, without workers (workers/registry.py)."""
from __future__ import annotations

import pytest
from apache_beam.portability.api import beam_fn_api_pb2

from beam_gpu_runner.bridge.beam import ExtendedProvisionInfo
from beam_gpu_runner.workers.registry import WorkerRegistry


class TestingWorker:
    __test__ = False

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.handler = self
        self.data_conn = "data-of-%s" % worker_id
        self.control_conn = "control-of-%s" % worker_id


def test_descriptors_workers_utility_worker_and_close_callbacks():
    registry = WorkerRegistry(ExtendedProvisionInfo(), host="localhost")
    closed: list[str] = []
    try:
        descriptor = beam_fn_api_pb2.ProcessBundleDescriptor(id="job-1-stage-3")
        registry.register_process_bundle_descriptor(descriptor)
        asked = beam_fn_api_pb2.GetProcessBundleDescriptorRequest(
            process_bundle_descriptor_id="job-1-stage-3")
        assert registry.get_process_bundle_descriptor(asked) == descriptor
        worker = TestingWorker("w1")
        registry.add(worker)
        assert registry.get_worker("w1") is worker
        registry.remove(worker)
        with pytest.raises(KeyError):
            registry.get_worker("w1")
        # Beam's merging-window code asks the endpoints for a worker's
        # connections: the utility worker starts on first use, once.
        started: list[TestingWorker] = []
        registry.set_utility_worker_factory(
            lambda: started.append(TestingWorker("utility")) or started[-1],
            lambda w: closed.append("stopped %s" % w.worker_id))
        [endpoints] = registry.get_worker_handlers(None, 1)
        assert endpoints.data_conn == "data-of-utility"
        assert endpoints.control_conn == "control-of-utility" and len(started) == 1
        assert endpoints.data_api_service_descriptor().url.startswith("localhost:")
        registry.on_close(lambda: closed.append("released devices"))
    finally:
        registry.close()
    assert closed == ["stopped utility", "released devices"]
    assert registry.grpc_server is None
