"""``beam-gpu-runner run``: usage, bad targets, and what the program gets."""
from __future__ import annotations

import sys

import pytest

from beam_gpu_runner.runner import run_main


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_prints_usage(flag, capsys):
    assert run_main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: beam-gpu-runner run MODULE_OR_SCRIPT")
    assert "--fake_gpus" in out


def test_no_target_is_a_usage_error(capsys):
    assert run_main([]) == 2
    assert "usage: beam-gpu-runner run" in capsys.readouterr().err


def test_an_option_instead_of_a_target(capsys):
    assert run_main(["--num_workers=2", "my_pipeline.py"]) == 2
    err = capsys.readouterr().err
    assert "'--num_workers=2' is an option" in err and "usage:" in err


@pytest.mark.parametrize("target, words", [
    ("no_such_module_xyz", ["cannot run module 'no_such_module_xyz'", "not found"]),
    ("no_such_pkg_xyz.mod", ["cannot run module 'no_such_pkg_xyz.mod'",
                             "ModuleNotFoundError"]),
    ("missing/pipeline.py", ["no such pipeline script 'missing/pipeline.py'"]),
])
def test_bad_targets_are_named(target, words, capsys):
    assert run_main([target]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_a_script_runs_as_main_with_gpu_runner_added(tmp_path, capsys, monkeypatch):
    script = tmp_path / "show_args.py"
    script.write_text("import sys\nif __name__ == '__main__':\n    print(sys.argv[1:])\n")
    monkeypatch.setattr(sys, "argv", list(sys.argv))   # run_main sets it
    assert run_main([str(script), "--num_workers=1"]) == 0
    assert capsys.readouterr().out.strip() == str(
        ["--num_workers=1", "--runner=beam_gpu_runner.GpuRunner"])
    assert run_main([str(script), "--runner=DirectRunner"]) == 0
    assert capsys.readouterr().out.strip() == str(["--runner=DirectRunner"])


def test_an_interrupted_program_exits_130(tmp_path, capsys, monkeypatch):
    script = tmp_path / "interrupted.py"
    script.write_text("raise KeyboardInterrupt\n")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert run_main([str(script)]) == 130
    assert "interrupted.py: stopped" in capsys.readouterr().err
