"""GPU driver: NVML through a fake, discovery scripts and their failure modes."""
from __future__ import annotations

import os
import pickle
import stat
import sys
from pathlib import Path

import pytest

from beam_gpu_runner.drivers.gpu import BUNDLED_SCRIPT, GpuDriver, GpuDriverFactory
from beam_gpu_runner.drivers.nvml import NvmlDevice, NvmlUnavailable, PynvmlNvml, TestingNvml
from beam_gpu_runner.resources.api import (
    DiscoveryError,
    EnumeratingDriver,
    ExternalResourceDriver,
)
from beam_gpu_runner.resources.config import ConfigError

H100 = "NVIDIA H100 80GB HBM3"
TWO_GPUS = [
    NvmlDevice(0, "GPU-aaaa", H100, 85520809984, "00000000:18:00.0"),
    NvmlDevice(1, "GPU-bbbb", H100, 85520809984, "00000000:2A:00.0"),
]
MIG = [
    NvmlDevice(0, "MIG-1111", "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 5 << 30,
               mig_index=0, parent_uuid="GPU-cccc"),
    NvmlDevice(0, "MIG-2222", "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 5 << 30,
               mig_index=1, parent_uuid="GPU-cccc"),
]


def script(tmp_path: Path, body: str, name: str = "disc.sh", mode: int = 0o755) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def test_satisfies_the_plugin_protocols() -> None:
    driver = GpuDriverFactory(TestingNvml(TWO_GPUS)).create_driver({})
    assert isinstance(driver, ExternalResourceDriver)
    assert isinstance(driver, EnumeratingDriver)


def test_nvml_discovery_properties() -> None:
    driver = GpuDriver({}, nvml=TestingNvml(TWO_GPUS))
    infos = driver.all_resource_info()
    assert [i.get_property("index") for i in infos] == ["0", "1"]
    first = infos[0]
    assert first.get_property("uuid") == "GPU-aaaa"
    assert first.get_property("name") == H100
    assert first.get_property("memory-total") == "85520809984"
    assert first.get_property("pci-bus-id") == "00000000:18:00.0"
    assert {i.get_property("uuid") for i in driver.retrieve_resource_info(1)} == {"GPU-aaaa"}


def test_mig_devices_carry_mig_uuid_and_parent() -> None:
    infos = GpuDriver({}, nvml=TestingNvml(MIG)).all_resource_info()
    assert [i.get_property("uuid") for i in infos] == ["MIG-1111", "MIG-2222"]
    assert infos[1].get_property("parent-index") == "0"
    assert infos[1].get_property("mig-index") == "1"
    assert infos[1].get_property("parent-uuid") == "GPU-cccc"


def test_nvml_unavailable_means_zero_devices(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    driver = GpuDriver({}, nvml=TestingNvml(error="NVML Shared Library Not Found"))
    assert driver.all_resource_info() == []
    assert "NVML unavailable" in caplog.text
    with pytest.raises(DiscoveryError, match="asked for 1 GPU.*found 0"):
        driver.retrieve_resource_info(1)


def test_real_pynvml_seam_never_crashes_without_gpu() -> None:
    try:
        devices = PynvmlNvml().devices()
    except NvmlUnavailable:
        return
    assert all(isinstance(d, NvmlDevice) for d in devices)


def test_too_few_gpus_names_them() -> None:
    with pytest.raises(DiscoveryError, match="asked for 3.*found 2: 0=NVIDIA H100"):
        GpuDriver({}, nvml=TestingNvml(TWO_GPUS)).retrieve_resource_info(3)


# -- discovery scripts (Flink's contract) -------------------------------------

@pytest.mark.slow   # runs a discovery script
def test_script_output_enriched_from_nvml(tmp_path: Path) -> None:
    path = script(tmp_path, 'echo "1,0"')
    driver = GpuDriver({"discovery-script.path": str(path)}, nvml=TestingNvml(TWO_GPUS))
    infos = driver.retrieve_resource_info(2)
    assert {i.get_property("uuid") for i in infos} == {"GPU-aaaa", "GPU-bbbb"}


@pytest.mark.slow   # runs a discovery script
def test_script_gets_amount_and_args(tmp_path: Path) -> None:
    out = tmp_path / "argv.txt"
    path = script(tmp_path, 'echo "$@" > %s; echo 3,4' % out)
    driver = GpuDriver({"discovery-script.path": str(path),
                        "discovery-script.args": "--enable-coordination-mode --x 'a b'"},
                       nvml=TestingNvml())
    infos = driver.retrieve_resource_info(2)
    assert out.read_text().strip() == "2 --enable-coordination-mode --x a b"
    assert sorted(i.get_property("index") for i in infos) == ["3", "4"]
    assert all(i.get_property("uuid") is None for i in infos)   # no NVML to enrich


def test_script_missing(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="discovery-script.path.*does not exist"):
        GpuDriver({"discovery-script.path": str(tmp_path / "nope.sh")})


def test_script_not_executable(tmp_path: Path) -> None:
    path = script(tmp_path, "echo 0", mode=0o644)
    with pytest.raises(DiscoveryError, match="not executable.*chmod \\+x"):
        GpuDriver({"discovery-script.path": str(path)})


def test_script_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="not a file"):
        GpuDriver({"discovery-script.path": str(tmp_path)})


@pytest.mark.slow   # runs a discovery script
def test_script_non_zero_exit_shows_output(tmp_path: Path) -> None:
    path = script(tmp_path, 'echo partial; echo "no GPU for you" >&2; exit 3')
    driver = GpuDriver({"discovery-script.path": str(path)}, nvml=TestingNvml())
    with pytest.raises(DiscoveryError) as info:
        driver.retrieve_resource_info(1)
    text = str(info.value)
    assert "exited with code 3" in text and "partial" in text and "no GPU for you" in text


@pytest.mark.slow   # runs a discovery script
def test_script_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    # the script's child keeps stdout open; we must not wait for it
    path = script(tmp_path, 'echo started; sleep 30 & sleep 30')
    driver = GpuDriver({"discovery-script.path": str(path),
                        "discovery-script.timeout": "0.5"}, nvml=TestingNvml())
    with pytest.raises(DiscoveryError, match="timed out after 0.5s.*started"):
        driver.retrieve_resource_info(1)


@pytest.mark.parametrize("output, match", [
    ("zero,one", "not comma-separated GPU indexes.*'zero'"),
    ("0,-1", "bad entry '-1'"),
    ("0,0", "twice"),
    ("", "found 0 GPU"),
    ("0", "found 1 GPU.*2 were asked"),
])
@pytest.mark.slow   # runs a discovery script
def test_script_garbage_output(tmp_path: Path, output: str, match: str) -> None:
    path = script(tmp_path, "echo '%s'" % output)
    driver = GpuDriver({"discovery-script.path": str(path)}, nvml=TestingNvml())
    with pytest.raises(DiscoveryError, match=match):
        driver.retrieve_resource_info(2)


@pytest.mark.slow   # runs a discovery script
def test_script_extra_indexes_are_trimmed(tmp_path: Path) -> None:
    path = script(tmp_path, "echo 0,1,2")
    driver = GpuDriver({"discovery-script.path": str(path)}, nvml=TestingNvml())
    assert len(driver.retrieve_resource_info(2)) == 2


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_bad_timeout(tmp_path: Path, value: str) -> None:
    path = script(tmp_path, "echo 0")
    with pytest.raises(ConfigError, match="discovery-script.timeout=%r" % value):
        GpuDriver({"discovery-script.path": str(path), "discovery-script.timeout": value})


@pytest.mark.slow   # runs a discovery script
def test_script_without_amount_uses_nvml_count(tmp_path: Path) -> None:
    path = script(tmp_path, 'echo "$1" > %s/amount; echo 0,1' % tmp_path)
    driver = GpuDriver({"discovery-script.path": str(path)}, nvml=TestingNvml(TWO_GPUS))
    assert len(driver.all_resource_info()) == 2
    assert (tmp_path / "amount").read_text().strip() == "2"
    no_nvml = GpuDriver({"discovery-script.path": str(path)}, nvml=TestingNvml())
    with pytest.raises(DiscoveryError, match="set external-resource.gpu.amount"):
        no_nvml.all_resource_info()


def test_discovery_error_pickles() -> None:
    err = DiscoveryError("GPU discovery script x exited with code 1")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is DiscoveryError and str(again) == str(err)


# -- the bundled gpu-discovery.sh, with a fake nvidia-smi ---------------------

@pytest.fixture
def fake_smi(tmp_path: Path) -> dict[str, str]:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n3\\n'\n")
    smi.chmod(0o755)
    return {**os.environ, "NVIDIA_SMI": str(smi)}


def run_bundled(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    import subprocess
    proc = subprocess.run([str(BUNDLED_SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=30)
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def test_bundled_script_is_executable() -> None:
    assert BUNDLED_SCRIPT.is_file()
    assert BUNDLED_SCRIPT.stat().st_mode & stat.S_IXUSR


@pytest.mark.slow   # runs a discovery script
def test_bundled_script_plain(fake_smi: dict[str, str]) -> None:
    assert run_bundled(fake_smi, "2")[:2] == (0, "0,1")
    code, _, err = run_bundled(fake_smi, "5")
    assert code != 0 and "asked for 5 GPU(s) but found 4" in err
    code, _, err = run_bundled(fake_smi, "abc")
    assert code != 0 and "AMOUNT" in err
    code, _, err = run_bundled(fake_smi, "1", "--bogus")
    assert code != 0 and "unknown argument" in err


@pytest.mark.parametrize("flag", ["--enable-coordination-mode", "--enable-coordination"])
@pytest.mark.slow   # runs a discovery script
def test_bundled_script_coordination_is_disjoint(fake_smi: dict[str, str], tmp_path: Path,
                                                 flag: str) -> None:
    coord = str(tmp_path / "coord")
    code1, first, _ = run_bundled(fake_smi, "2", flag, "--coordination-file", coord)
    code2, second, _ = run_bundled(fake_smi, "2", flag, "--coordination-file", coord)
    assert (code1, code2) == (0, 0)
    assert set(first.split(",")).isdisjoint(second.split(","))
    code3, _, err = run_bundled(fake_smi, "1", flag, "--coordination-file", coord)
    assert code3 != 0 and "only 0 of 4 are free" in err


@pytest.mark.slow   # runs a discovery script
def test_bundled_script_reclaims_dead_holders(fake_smi: dict[str, str],
                                              tmp_path: Path) -> None:
    import subprocess
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    coord = tmp_path / "coord"
    coord.write_text("".join("%d %d\n" % (i, dead.pid) for i in range(4)))
    code, out, err = run_bundled(fake_smi, "4", "--enable-coordination-mode",
                                 "--coordination-file", str(coord))
    assert (code, out) == (0, "0,1,2,3")
    assert "reclaiming GPU 0 from dead process %d" % dead.pid in err


@pytest.mark.slow   # runs a discovery script
def test_gpu_driver_runs_bundled_script_by_name(fake_smi: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("NVIDIA_SMI", fake_smi["NVIDIA_SMI"])
    monkeypatch.chdir(tmp_path)
    driver = GpuDriver({"discovery-script.path": "gpu-discovery.sh",
                        "discovery-script.args": "--enable-coordination "
                        "--coordination-file %s" % (tmp_path / "c")},
                       nvml=TestingNvml())
    assert driver.script == BUNDLED_SCRIPT
    assert sorted(i.get_property("index") for i in driver.retrieve_resource_info(3)) == [
        "0", "1", "2"]


# -- real hardware --------------------------------------------------------------

@pytest.mark.gpu
def test_real_nvml_discovery() -> None:
    try:
        devices = PynvmlNvml().devices()
    except NvmlUnavailable as exc:
        pytest.skip("no usable NVML here: %s" % exc)
    if not devices:
        pytest.skip("NVML works but lists no GPU")
    infos = GpuDriver({}).all_resource_info()
    assert len(infos) == len(devices)
    for info in infos:
        assert (info.get_property("uuid") or "").startswith(("GPU-", "MIG-"))
        assert info.get_property("name")
        assert int(info.get_property("memory-total") or 0) > 0
    indexes = [int(i.get_property("index") or -1) for i in infos]
    assert indexes == sorted(indexes)
