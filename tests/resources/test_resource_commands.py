"""`beam-gpu-runner resources` and `beam-gpu-runner plan`."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import apache_beam as beam
import pytest

from beam_gpu_runner.resources.commands import capture_pipelines, plan_main, resources_main

TESTING = ["--external_resource", "external-resource.gpu.driver-factory.class=testing",
           "--external_resource", "external-resource.gpu.param.num-devices=2"]

SCRIPT = textwrap.dedent('''
    import argparse
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    def main():
        parser = argparse.ArgumentParser()
        parser.add_argument("--count", default="1")
        known, rest = parser.parse_known_args()
        with beam.Pipeline(options=PipelineOptions(rest)) as p:
            (p | beam.Create([1])
               | "Classify" >> beam.Map(lambda x: x).with_resource_hints(
                   accelerator="type:nvidia-h100;count:%s" % known.count))
        open(known.count + ".ran-on", "w").close()   # after run(): must still work

    if __name__ == "__main__":
        main()
''')


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "my_gpu_pipeline.py"
    path.write_text(SCRIPT)
    monkeypatch.chdir(tmp_path)
    return path


def test_plan_script_prints_report_and_emitters(script: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run_before = beam.Pipeline.run
    code = plan_main([str(script), "--count", "2", "--runner=beam_gpu_runner.GpuRunner",
                      *TESTING])
    out = capsys.readouterr().out
    assert code == 0
    assert "stage Classify" in out and "HONOURED" in out
    assert "external-resource.gpu.amount: 2" in out
    assert "nvidia.com/gpu: 2" in out
    assert "container_resources: yarn.io/gpu=2" in out
    assert beam.Pipeline.run is run_before           # patch undone


def test_plan_exit_1_when_hint_cannot_be_met(script: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_main([str(script), "--count", "3", *TESTING]) == 1
    captured = capsys.readouterr()
    assert "UNSATISFIABLE" in captured.out and "would fail" in captured.err


def test_plan_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "my_gpu_module.py").write_text(SCRIPT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert plan_main(["my_gpu_module", *TESTING]) == 0
    assert "stage Classify" in capsys.readouterr().out


def test_capture_does_not_run(script: Path) -> None:
    pipelines = capture_pipelines(str(script), ["--count", "1"])
    assert len(pipelines) == 1
    names = {t.unique_name for t in pipelines[0].components.transforms.values()}
    assert "Classify" in names


def test_plan_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_main([]) == 2
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    assert plan_main([str(broken)]) == 2
    assert "RuntimeError: boom" in capsys.readouterr().err
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert plan_main([str(empty)]) == 2
    assert "built no pipeline" in capsys.readouterr().err
    assert plan_main([str(empty), "--external_resource",
                      "external-resource.gpu.amount=abc"]) == 2
    assert "'abc'" in capsys.readouterr().err


def test_resources_lists_devices_and_leases(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from beam_gpu_runner.resources.assignment import DeviceAllocator
    from beam_gpu_runner.resources.config import load_config
    from beam_gpu_runner.resources.requirements import StageRequirements
    config = load_config(None, [TESTING[1], TESTING[3]])
    with DeviceAllocator(config, str(tmp_path)) as alloc:
        alloc.acquire("Classify", StageRequirements(gpu_count=1), "count:1", "worker-9")
        assert resources_main([*TESTING, "--lease_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gpu: 2" in out and "GPU-testing-" in out
    assert "Leases in %s" % tmp_path in out and "Classify/worker-9" in out
    assert resources_main(["--external_resource", "external-resource.gpu.amount=-1"]) == 2
    assert "external-resource.gpu.amount" in capsys.readouterr().err


def test_cli_table_points_here() -> None:
    from beam_gpu_runner.cli import SUBCOMMANDS
    assert SUBCOMMANDS["plan"][0] == "beam_gpu_runner.runner:plan_main"
    assert SUBCOMMANDS["resources"][0] == "beam_gpu_runner.resources.commands:resources_main"
    assert sys.modules["beam_gpu_runner.resources.commands"].plan_main is plan_main
