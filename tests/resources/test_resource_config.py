"""Flink-style external resource config: sources, shapes and malformed values."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from beam_gpu_runner.resources.config import (
    ConfigError,
    ExternalResourceConfig,
    ResourceSpec,
    load_config,
)


def test_default_is_gpu_driver_all_discovered() -> None:
    config = ExternalResourceConfig.load()
    assert config.names == ("gpu",)
    spec = config.get("gpu")
    assert spec == ResourceSpec("gpu", "gpu", amount=None)
    assert not config.explicit


def test_overrides_merge_over_default_gpu() -> None:
    config = load_config(None, [
        "external-resource.gpu.driver-factory.class=testing",
        "external-resource.gpu.amount=2",
        "external-resource.gpu.param.num-devices=4",
        "external-resource.gpu.kubernetes.config-key=nvidia.com/gpu",
        "external-resource.gpu.yarn.config-key=yarn.io/gpu"])
    spec = config.get("gpu")
    assert spec is not None
    assert (spec.driver_factory, spec.amount) == ("testing", 2)
    assert spec.params == {"num-devices": "4"}
    assert spec.kubernetes_config_key == "nvidia.com/gpu"
    assert spec.yarn_config_key == "yarn.io/gpu"


def test_flat_yaml(tmp_path: Path) -> None:
    path = tmp_path / "res.yaml"
    path.write_text(
        "external-resources: gpu;fpga\n"
        "external-resource.gpu.amount: 2\n"
        "external-resource.gpu.param.discovery-script.path: /opt/disc.sh\n"
        "external-resource.fpga.driver-factory.class: my.pkg:FpgaFactory\n"
        "external-resource.fpga.param.vendor: xilinx\n")
    config = load_config(str(path))
    assert config.names == ("gpu", "fpga")
    gpu, fpga = config.get("gpu"), config.get("fpga")
    assert gpu is not None and fpga is not None
    assert gpu.amount == 2 and gpu.driver_factory == "gpu"
    # each driver sees only its own param keys, prefix stripped
    assert gpu.params == {"discovery-script.path": "/opt/disc.sh"}
    assert fpga.params == {"vendor": "xilinx"}


def test_nested_yaml_and_override_wins(tmp_path: Path) -> None:
    path = tmp_path / "res.yaml"
    path.write_text("external-resources: [gpu]\n"
                    "external-resource:\n  gpu:\n    amount: 3\n"
                    "    param:\n      num-devices: 8\n"
                    "    driver-factory:\n      class: testing\n")
    config = load_config(str(path), ["external-resource.gpu.amount=1"])
    spec = config.get("gpu")
    assert spec is not None
    assert (spec.amount, spec.driver_factory, spec.params) == (1, "testing",
                                                               {"num-devices": "8"})


def test_round_trip_to_flat() -> None:
    config = load_config(None, ["external-resource.gpu.amount=2"])
    assert ExternalResourceConfig.from_mapping(config.to_flat()) == config


def test_empty_list_means_no_resources() -> None:
    assert load_config(None, ["external-resources="]).resources == ()
    assert load_config(None, ["external-resources=none"]).resources == ()


@pytest.mark.parametrize("override, words", [
    ("external-resource.gpu.amount=abc", ["external-resource.gpu.amount", "'abc'",
                                          "whole number"]),
    ("external-resource.gpu.amount=-1", ["external-resource.gpu.amount", "'-1'", ">= 1"]),
    ("external-resource.gpu.amount=0", ["external-resource.gpu.amount", "'0'"]),
    ("external-resource.gpu.amont=2", ["unknown key shape", "amont", "amount"]),
    ("external-resource.gpu.param.=2", ["unknown key shape"]),
    ("externalresource.gpu.amount=2", ["unknown key", "externalresource"]),
    ("external-resource.fpga.amount=1", ["'fpga'", "not listed", "external-resources=gpu;fpga"]),
    ("external-resources=gpu;gpu", ["twice"]),
    ("external-resources=g p u", ["letters"]),
    ("no-equals-sign", ["KEY=VALUE"]),
])
def test_malformed_values_name_key_value_and_fix(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value)


def test_listed_resource_without_driver_is_an_error() -> None:
    with pytest.raises(ConfigError, match="fpga.*driver-factory.class"):
        load_config(None, ["external-resources=gpu;fpga"])


def test_yaml_bool_amount_and_bad_documents(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("external-resource.gpu.amount: yes\n")
    with pytest.raises(ConfigError, match="amount"):
        load_config(str(path))
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(path))
    path.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="check the path"):
        load_config(str(tmp_path / "missing.yaml"))


def test_from_options() -> None:
    from apache_beam.options.pipeline_options import PipelineOptions
    options = PipelineOptions([
        "--external_resource", "external-resource.gpu.driver-factory.class=testing",
        "--external_resource", "external-resource.gpu.amount=2"])
    spec = ExternalResourceConfig.from_options(options).get("gpu")
    assert spec is not None and (spec.driver_factory, spec.amount) == ("testing", 2)


def test_config_error_pickles() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["external-resource.gpu.amount=abc"])
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is ConfigError and str(again) == str(info.value)
    assert isinstance(again, ValueError)


def test_specs_are_frozen_and_hashable() -> None:
    config = load_config(None, ["external-resource.gpu.param.a=1"])
    hash(config)
    with pytest.raises(AttributeError):
        config.resources[0].amount = 3  # type: ignore[misc]


def test_fake_gpu_keys_are_testing_driver_overrides() -> None:
    from beam_gpu_runner.resources.config import fake_gpu_keys
    keys = fake_gpu_keys(3)
    assert keys == ["external-resources=gpu",
                    "external-resource.gpu.driver-factory.class=testing",
                    "external-resource.gpu.param.num-devices=3"]
    spec = load_config(None, keys).get("gpu")
    assert spec is not None and spec.driver_factory == "testing"
    assert spec.params == {"num-devices": "3"}
    named = load_config(None, fake_gpu_keys(1, device_name="Tesla T4")).get("gpu")
    assert named is not None and named.params["device-name"] == "Tesla T4"
    for bad in (0, -1, True, "2"):
        with pytest.raises(ConfigError, match="whole number >= 1"):
            fake_gpu_keys(bad)  # type: ignore[arg-type]


def test_fake_gpus_option_fakes_devices_and_says_so(caplog) -> None:
    import logging
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_gpu_runner.resources.assignment import DeviceAllocator
    with caplog.at_level(logging.INFO, logger="beam_gpu_runner.resources.config"):
        config = ExternalResourceConfig.from_options(PipelineOptions(["--fake_gpus=2"]))
    assert "--fake_gpus=2: 2 fake GPU(s) from the testing driver" in caplog.text
    with DeviceAllocator(config, drivers=None) as allocator:
        gpus = allocator.devices()["gpu"]
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert ExternalResourceConfig.from_options(PipelineOptions([])) == \
        ExternalResourceConfig.default()


def test_fake_gpus_with_an_explicit_config_is_an_error_naming_both(tmp_path: Path) -> None:
    from apache_beam.options.pipeline_options import PipelineOptions
    path = tmp_path / "gpus.yaml"
    path.write_text("external-resource.gpu.amount: 1\n")
    for args, named in (
            (["--external_resource=external-resource.gpu.amount=1"],
             "--external_resource=external-resource.gpu.amount=1"),
            (["--external_resources_config=%s" % path],
             "--external_resources_config=%s" % path)):
        with pytest.raises(ConfigError) as info:
            ExternalResourceConfig.from_options(PipelineOptions(["--fake_gpus=2", *args]))
        assert "--fake_gpus=2 and %s were both given" % named in str(info.value)


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_fake_gpus_flag_wants_a_positive_count(value: str) -> None:
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_gpu_runner.options import GpuRunnerOptions
    with pytest.raises(SystemExit):
        PipelineOptions(["--fake_gpus=%s" % value]).view_as(GpuRunnerOptions)
