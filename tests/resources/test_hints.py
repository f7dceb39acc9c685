"""Beam resource hints -> StageRequirements, and accelerator type matching."""
from __future__ import annotations

import pickle

import pytest
from apache_beam.portability.common_urns import resource_hints as beam_urns

from beam_gpu_runner.resources.hints import (
    ACCELERATOR_URN,
    CPU_COUNT_URN,
    MAX_ACTIVE_BUNDLES_URN,
    MIN_RAM_URN,
    InvalidHintError,
    accelerator_matches,
    accelerator_text,
    parse_accelerator,
    requirements_from_hints,
)


def test_urns_agree_with_beam() -> None:
    assert ACCELERATOR_URN == beam_urns.ACCELERATOR.urn
    assert MIN_RAM_URN == beam_urns.MIN_RAM_BYTES.urn
    assert CPU_COUNT_URN == beam_urns.CPU_COUNT.urn
    assert MAX_ACTIVE_BUNDLES_URN == beam_urns.MAX_ACTIVE_BUNDLES_PER_WORKER.urn


def test_full_hint_set() -> None:
    req = requirements_from_hints({
        ACCELERATOR_URN: b"type:nvidia-h100;count:2;install-nvidia-driver",
        MIN_RAM_URN: b"4000000000", CPU_COUNT_URN: b"8",
        MAX_ACTIVE_BUNDLES_URN: b"3"}, ["Classify"])
    assert req.gpu_count == 2 and req.whole_devices == 2
    assert req.accelerator_type == "nvidia-h100" and req.install_driver
    assert (req.min_ram_bytes, req.cpu_count, req.max_active_bundles_per_worker) == (
        4000000000, 8, 3)


def test_no_hints_no_requirements() -> None:
    assert not requirements_from_hints({}).needs_gpu


def test_fractional_count_and_defaults() -> None:
    half = parse_accelerator(b"type:nvidia-tesla-t4;count:0.5")
    assert half.count == 0.5
    req = requirements_from_hints({ACCELERATOR_URN: b"count:0.25"})
    assert req.gpu_count == 0.25 and req.whole_devices == 1 and req.accelerator_type is None
    assert parse_accelerator("type:nvidia-l4").count == 1.0


def test_dataflow_extras_are_kept_not_fatal() -> None:
    hint = parse_accelerator(b"type:nvidia-l4;count:1;install-nvidia-driver:5xx;use-nvidia-mps")
    assert hint.install_driver and hint.other_flags == ("use-nvidia-mps",)


@pytest.mark.parametrize("text", ["type:nvidia-h100;count:abc", "count:-1", "count:0",
                                  "count:nan", "count:inf", "count:1.5", "type:;count:1",
                                  ""])
def test_malformed_accelerator_names_hint_and_transforms(text: str) -> None:
    with pytest.raises(InvalidHintError) as info:
        requirements_from_hints({ACCELERATOR_URN: text.encode()}, ["Classify", "Score"])
    message = str(info.value)
    assert repr(text) in message
    assert "'Classify', 'Score'" in message


@pytest.mark.parametrize("urn, value", [(MIN_RAM_URN, b"lots"), (CPU_COUNT_URN, b"0"),
                                        (MAX_ACTIVE_BUNDLES_URN, b"-2")])
def test_malformed_other_hints(urn: str, value: bytes) -> None:
    with pytest.raises(InvalidHintError, match="'T1'"):
        requirements_from_hints({urn: value}, ["T1"])


def test_many_transforms_are_abbreviated() -> None:
    with pytest.raises(InvalidHintError, match="and 2 more"):
        parse_accelerator("count:x", ["T%d" % i for i in range(7)])


def test_invalid_hint_error_pickles() -> None:
    with pytest.raises(InvalidHintError) as info:
        parse_accelerator("count:abc", ["Classify"])
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is InvalidHintError and str(again) == str(info.value)


def test_accelerator_text() -> None:
    assert accelerator_text({ACCELERATOR_URN: b"type:x"}) == "type:x"
    assert accelerator_text({}) is None


@pytest.mark.parametrize("accel, name", [
    ("nvidia-h100", "NVIDIA H100 80GB HBM3"),
    ("nvidia-h100-80gb", "NVIDIA H100 80GB HBM3"),
    ("nvidia-h100-mega-80gb", "NVIDIA H100 80GB HBM3"),
    ("nvidia-tesla-t4", "Tesla T4"),
    ("nvidia-l4", "NVIDIA L4"),
    ("nvidia-l40s", "NVIDIA L40S"),
    ("nvidia-tesla-a100", "NVIDIA A100-SXM4-40GB"),
    ("nvidia-a100-80gb", "NVIDIA A100 80GB PCIe"),
    ("nvidia-a100-80gb", "NVIDIA A100-SXM4-80GB"),
    ("nvidia-tesla-v100", "Tesla V100-SXM2-16GB"),
    ("nvidia-tesla-p100", "Tesla P100-PCIE-16GB"),
    ("NVIDIA-H100", "NVIDIA H100 80GB HBM3"),
    ("nvidia-a10g", "NVIDIA A10G"),
    ("nvidia-geforce-rtx-4090", "NVIDIA GeForce RTX 4090"),
])
def test_type_matches(accel: str, name: str) -> None:
    assert accelerator_matches(accel, name)


@pytest.mark.parametrize("accel, name", [
    ("nvidia-l4", "NVIDIA L40S"),
    ("nvidia-l4", "NVIDIA L40"),
    ("nvidia-a10", "NVIDIA A10G"),
    ("nvidia-a100-80gb", "NVIDIA A100-SXM4-40GB"),
    ("nvidia-h100", "NVIDIA H200"),
    ("nvidia-h200-141gb", "NVIDIA H100 80GB HBM3"),
    ("nvidia-tesla-t4", "NVIDIA L4"),
    ("nvidia-tesla-v100", "Tesla P100-PCIE-16GB"),
    ("nvidia-h100", None),
])
def test_type_does_not_match(accel: str, name: str | None) -> None:
    assert not accelerator_matches(accel, name)


def test_memory_token_checked_against_memory_when_name_has_none() -> None:
    h200 = 150754820096
    assert accelerator_matches("nvidia-h200-141gb", "NVIDIA H200", h200)
    assert accelerator_matches("nvidia-h200-141gb", "NVIDIA H200", None)
    assert not accelerator_matches("nvidia-h200-141gb", "NVIDIA H200", 80 * 10**9)


@pytest.mark.parametrize("accel", ["nvidia", "nvidia-gpu", "NVIDIA"])
def test_vendor_only_type_matches_any_gpu_the_driver_found(accel: str) -> None:
    # NVML reports only NVIDIA devices, and some names lack the word ("Tesla T4").
    assert accelerator_matches(accel, "NVIDIA H100 80GB HBM3")
    assert accelerator_matches(accel, "Tesla T4")
    assert not accelerator_matches(accel, None)


def test_no_type_matches_any_device() -> None:
    assert accelerator_matches(None, "Tesla T4")
    assert accelerator_matches("", None)
