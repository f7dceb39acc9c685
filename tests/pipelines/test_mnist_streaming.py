"""The streaming pipeline end to end on Beam's local runner."""
from __future__ import annotations

import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest

from beam_gpu_runner.pipelines import mnist_streaming
from beam_gpu_runner.pipelines.mnist_streaming import StreamingConfig, build, run
from beam_gpu_runner.pipelines.runner_flag import RunnerUnavailableError
from beam_gpu_runner.transforms import bundled
from beam_gpu_runner.transforms.classifier import BatchClassifier, evaluate
from beam_gpu_runner.transforms.idx import MnistData
from beam_gpu_runner.transforms.sink import HEADER

import jax


def _read_predictions(folder: Path) -> dict[int, tuple[int, int]]:
    rows: dict[int, tuple[int, int]] = {}
    for name in os.listdir(folder):
        assert name.startswith("predictions-") and name.endswith(".csv"), name
        lines = (folder / name).read_text().splitlines()
        assert lines[0] == HEADER
        for line in lines[1:]:
            index, label, prediction, _, _ = line.split(",")
            assert int(index) not in rows
            rows[int(index)] = (int(label), int(prediction))
    return rows


def test_small_run_matches_offline_predictions(beam_runner: str, tmp_path: Path,
                                               test_set: MnistData) -> None:
    out = tmp_path / "out"
    summary = run(StreamingConfig(num_images=300, rate=0.0, batch_size=64,
                                  output=str(out), runner=beam_runner))
    assert summary.images == 300
    assert summary.images_by_device == {"cpu:0": 300}
    offline = BatchClassifier.from_file(
        bundled.default_model_path(), jax.devices("cpu")[0], 1000)(test_set.images[:300])
    rows = _read_predictions(out)
    assert sorted(rows) == list(range(300))
    assert [rows[i] for i in range(300)] == list(
        zip(test_set.labels[:300].tolist(), offline.tolist()))
    assert summary.correct == int(np.sum(offline == test_set.labels[:300]))


def test_full_test_set_equals_offline_evaluation(beam_runner: str, tmp_path: Path,
                                                 test_set: MnistData) -> None:
    offline = evaluate(bundled.default_model_path(), test_set.images, test_set.labels)
    summary = run(StreamingConfig(num_images=10000, rate=0.0, output=str(tmp_path),
                                  runner=beam_runner))
    assert (summary.images, summary.correct) == (offline.total, offline.correct)
    assert summary.accuracy == offline.accuracy >= 0.925


def test_full_test_set_reference_model_is_9214(beam_runner: str, tmp_path: Path,
                                               reference_model: str) -> None:
    summary = run(StreamingConfig(model_path=reference_model, num_images=10000, rate=0.0,
                                  batch_size=128, output=str(tmp_path), runner=beam_runner))
    assert (summary.images, summary.correct) == (10000, 9214)
    assert summary.accuracy == pytest.approx(0.9214)


def test_rate_limited_run_prints_windows(beam_runner: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    summary = run(StreamingConfig(num_images=400, rate=4000.0, batch_size=50,
                                  window_seconds=0.05, output=str(tmp_path),
                                  runner=beam_runner))
    assert summary.images == 400
    err = capsys.readouterr().err
    windows = [line for line in err.splitlines() if line.startswith("window ")]
    assert windows and all("accuracy" in w and "images/s" in w for w in windows)
    assert sum(int(w.split(": ")[1].split(" images")[0]) for w in windows) == 400
    assert "summary: 400 images" in err


def test_runs_on_direct_runner(tmp_path: Path) -> None:
    summary = run(StreamingConfig(num_images=200, rate=0.0, output=str(tmp_path),
                                  runner="DirectRunner"))
    assert summary.images == 200


def test_classify_stage_carries_the_accelerator_hint() -> None:
    pipeline = beam.Pipeline()
    build(pipeline, StreamingConfig(num_images=10, accelerator="type:nvidia;count:1"))
    proto = pipeline.to_runner_api()
    classify = [t for t in proto.components.transforms.values() if t.unique_name == "Classify"]
    env = proto.components.environments[classify[0].environment_id]
    assert env.resource_hints["beam:resources:accelerator:v1"] == b"type:nvidia;count:1"
    bare = beam.Pipeline()
    build(bare, StreamingConfig(num_images=10, accelerator=""))
    assert not any(e.resource_hints
                   for e in bare.to_runner_api().components.environments.values())


def test_unknown_runner_fails_naming_it() -> None:
    with pytest.raises(RunnerUnavailableError, match="beam_gpu_runner.NoSuchRunner"):
        run(StreamingConfig(num_images=10, runner="beam_gpu_runner.NoSuchRunner"))


def test_main_parses_flags_and_passes_the_rest_to_beam(
        beam_runner: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        mnist_streaming.main([
            "mnist_streaming", "--runner=%s" % beam_runner, "--num_images=150",
            "--rate=0", "--batch_size=50", "--output=%s" % tmp_path,
            "--direct_num_workers=1"])  # a Beam option, passed through
    assert info.value.code in (None, 0)
    assert "summary: 150 images" in capsys.readouterr().err
    assert len(_read_predictions(tmp_path)) == 150


def test_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        mnist_streaming.main(["mnist_streaming", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--window_seconds" in out and "--accelerator" in out


def test_fake_gpu_flag_unless_devices_are_configured() -> None:
    from beam_gpu_runner.pipelines.mnist_streaming import with_fake_gpu_if_none
    assert with_fake_gpu_if_none(StreamingConfig(), ["--fake_gpus=2"]) == ["--fake_gpus=2"]
    explicit = ["--external_resource=external-resource.gpu.amount=1"]
    assert with_fake_gpu_if_none(StreamingConfig(), explicit) == explicit
    assert with_fake_gpu_if_none(StreamingConfig(runner="DirectRunner"), []) == []
    assert with_fake_gpu_if_none(StreamingConfig(accelerator=""), []) == []


def test_interrupted_summary_counts_the_files_this_run_wrote(tmp_path: Path) -> None:
    from beam_gpu_runner.pipelines.mnist_streaming import _summary
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions-old.csv").write_text(HEADER + "\n1,1,1,0,0\n")
    (out / "predictions-new.csv").write_text(HEADER + "\n2,2,2,0,0\n3,3,4,0,0\n")
    config = StreamingConfig(output=str(out))
    summary = _summary(None, config, {"predictions-old.csv"}, 2.0, stop_signal=2)
    assert (summary.images, summary.correct, summary.stop_signal) == (2, 1, 2)
    assert summary.line().startswith("summary: 2 images, accuracy 50.00% (1 correct), 1 images/s")
