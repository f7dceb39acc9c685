"""Per-stage hint report and Flink / Kubernetes / YARN emitters."""
from __future__ import annotations

import apache_beam as beam
import yaml
from apache_beam.portability.api import beam_runner_api_pb2

from beam_gpu_runner.drivers.testing import TestingDriver
from beam_gpu_runner.resources.config import load_config
from beam_gpu_runner.resources.emitters import (
    FLINK_GPU_FACTORY,
    emit_all,
    flink_config,
    format_emitted,
    kubernetes_resources,
    yarn_resources,
)
from beam_gpu_runner.resources.report import (
    DEGRADED,
    HONOURED,
    IGNORED,
    INVALID,
    UNSATISFIABLE,
    ResourcePlan,
    build_plan,
    format_plan,
    hinted_environments,
)

TESTING = load_config(None, ["external-resource.gpu.driver-factory.class=testing"])


def pipeline(**stages: dict[str, str]) -> beam_runner_api_pb2.Pipeline:
    p = beam.Pipeline()
    pcoll = p | beam.Create([1])
    for name, hints in stages.items():
        step = beam.Map(lambda x: x)
        pcoll = pcoll | name >> (step.with_resource_hints(**hints) if hints else step)
    return p.to_runner_api()


def plan(proto: beam_runner_api_pb2.Pipeline, gpus: int = 2,
         name: str = "NVIDIA H100 80GB HBM3") -> ResourcePlan:
    devices = {"gpu": tuple(TestingDriver(gpus, name).all_resource_info())}
    return build_plan(proto, TESTING, devices, host_memory=16 * 10**9, host_cpus=4)


def status(p: ResourcePlan, stage: str, hint: str) -> str:
    (s,) = [s for st in p.stages if st.name == stage for s in st.statuses if s.hint == hint]
    return s.status


def test_hinted_environments_group_transforms() -> None:
    proto = pipeline(Gpu={"accelerator": "type:nvidia-h100;count:1"}, Cpu={})
    envs = hinted_environments(proto)
    assert len(envs) == 1
    _, transforms, hints = envs[0]
    assert transforms == ("Gpu",)
    assert hints["beam:resources:accelerator:v1"] == b"type:nvidia-h100;count:1"


def test_statuses() -> None:
    p = plan(pipeline(
        Whole={"accelerator": "type:nvidia-h100;count:1;install-nvidia-driver",
               "min_ram": "1GB", "cpu_count": "2"},
        Half={"accelerator": "type:nvidia-h100;count:0.5", "min_ram": "64GB",
              "cpu_count": "16"},
        Wrong={"accelerator": "type:nvidia-l4;count:1"},
        TooMany={"accelerator": "count:3"},
        Bundles={"max_active_bundles_per_worker": "2"},
        Cpu={}))
    assert status(p, "Whole", "accelerator") == HONOURED
    assert status(p, "Whole", "accelerator:install-nvidia-driver") == IGNORED
    assert status(p, "Whole", "min_ram") == HONOURED
    assert status(p, "Whole", "cpu_count") == HONOURED
    assert status(p, "Half", "accelerator") == DEGRADED
    assert status(p, "Half", "min_ram") == DEGRADED
    assert status(p, "Half", "cpu_count") == DEGRADED
    assert status(p, "Wrong", "accelerator") == UNSATISFIABLE
    assert status(p, "TooMany", "accelerator") == UNSATISFIABLE
    assert status(p, "Bundles", "max_active_bundles_per_worker") == HONOURED
    assert p.unhinted_transforms > 0
    text = format_plan(p)
    assert "stage Half" in text and "DEGRADED" in text and "shares one GPU" in text
    assert "param.num-devices" in text   # the unsatisfiable ones name the key


def test_invalid_hint_is_reported_not_raised() -> None:
    p = plan(pipeline(Bad={"accelerator": "type:nvidia-h100;count:abc"}))
    statuses = p.stages[0].statuses
    assert statuses[0].status == INVALID and "'Bad'" in statuses[0].detail


def test_no_hints() -> None:
    p = plan(pipeline(Cpu={}))
    assert p.stages == ()
    assert "no transform carries resource hints" in format_plan(p)
    assert "nothing to configure" in flink_config(p).text


def test_flink_config() -> None:
    p = plan(pipeline(A={"accelerator": "type:nvidia-h100;count:2", "min_ram": "2GiB"},
                      B={"accelerator": "count:0.5", "cpu_count": "4"}))
    emitted = flink_config(p)
    conf = yaml.safe_load(emitted.text)
    assert conf["external-resources"] == "gpu"
    assert conf["external-resource.gpu.amount"] == 2
    assert conf["external-resource.gpu.driver-factory.class"] == FLINK_GPU_FACTORY
    assert conf["external-resource.gpu.param.discovery-script.args"] == \
        "--enable-coordination-mode"
    assert conf["external-resource.gpu.kubernetes.config-key"] == "nvidia.com/gpu"
    assert conf["external-resource.gpu.yarn.config-key"] == "yarn.io/gpu"
    assert conf["taskmanager.memory.process.size"] == "2048m"
    assert conf["kubernetes.taskmanager.cpu"] == 4
    assert any("0.5 rounded up to 1" in n for n in emitted.notes)


def test_kubernetes_rounds_fractions_up() -> None:
    p = plan(pipeline(Half={"accelerator": "type:nvidia-tesla-t4;count:0.5",
                            "min_ram": "1GiB", "cpu_count": "2"}), name="Tesla T4")
    emitted = kubernetes_resources(p)
    doc = yaml.safe_load(emitted.text)
    assert doc["resources"]["limits"] == {"nvidia.com/gpu": 1, "cpu": "2", "memory": "1024Mi"}
    assert doc["resources"]["requests"] == {"cpu": "2", "memory": "1024Mi"}
    assert doc["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert any("rounded up" in n for n in emitted.notes)


def test_vendor_only_type_selects_no_node_model() -> None:
    p = plan(pipeline(Any={"accelerator": "type:nvidia;count:1"}), name="Tesla T4")
    doc = yaml.safe_load(kubernetes_resources(p).text)
    assert doc["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "nodeSelector" not in doc


def test_config_keys_override_emitter_names() -> None:
    config = load_config(None, ["external-resource.gpu.driver-factory.class=testing",
                                "external-resource.gpu.kubernetes.config-key=amd.com/gpu",
                                "external-resource.gpu.yarn.config-key=yarn.io/fpga"])
    p = build_plan(pipeline(A={"accelerator": "count:1"}), config,
                   {"gpu": tuple(TestingDriver(1).all_resource_info())})
    assert yaml.safe_load(kubernetes_resources(p).text)["resources"]["limits"] == {
        "amd.com/gpu": 1}
    assert yarn_resources(p).text == "container_resources: yarn.io/fpga=1"


def test_yarn_request_and_mixed_types() -> None:
    p = plan(pipeline(A={"accelerator": "type:nvidia-h100;count:1", "min_ram": "1GiB"},
                      B={"accelerator": "type:nvidia-l4;count:2", "cpu_count": "3"}))
    emitted = yarn_resources(p)
    assert emitted.text == "container_resources: memory-mb=1024,vcores=3,yarn.io/gpu=2"
    notes = " ".join(emit_all(p)[1].notes)
    assert "different accelerator types" in notes
    assert format_emitted(emitted).startswith("# YARN resource request")
