"""Staged artifacts made usable by the runner's own workers (workers/staging.py)."""
from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from beam_gpu_runner.workers.staging import (
    EnvironmentStager, StagingError, split_requirements)

from .wheels import make_wheel

pytestmark = pytest.mark.slow  # builds packages in subprocesses


def staged_file(path: Path, name: str) -> beam_runner_api_pb2.ArtifactInformation:
    return beam_runner_api_pb2.ArtifactInformation(
        type_urn=common_urns.artifact_types.FILE.urn,
        type_payload=beam_runner_api_pb2.ArtifactFilePayload(
            path=str(path)).SerializeToString(),
        role_urn=common_urns.artifact_roles.STAGING_TO.urn,
        role_payload=beam_runner_api_pb2.ArtifactStagingToRolePayload(
            staged_name=name).SerializeToString())


def embedded(data: bytes, name: str) -> beam_runner_api_pb2.ArtifactInformation:
    return beam_runner_api_pb2.ArtifactInformation(
        type_urn=common_urns.artifact_types.EMBEDDED.urn,
        type_payload=beam_runner_api_pb2.EmbeddedFilePayload(data=data).SerializeToString(),
        role_urn=common_urns.artifact_roles.STAGING_TO.urn,
        role_payload=beam_runner_api_pb2.ArtifactStagingToRolePayload(
            staged_name=name).SerializeToString())


def environment(*deps: beam_runner_api_pb2.ArtifactInformation
                ) -> beam_runner_api_pb2.Environment:
    return beam_runner_api_pb2.Environment(urn="beam:env:external:v1", dependencies=deps)


def imports_in_worker(env: dict[str, str], code: str) -> str:
    """Run ``code`` in a fresh interpreter with the worker's PYTHONPATH."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": env.get("PYTHONPATH", "")},
                          check=True, timeout=60)
    return done.stdout.strip()


def can_build_wheels_offline() -> bool:
    for module in ("setuptools.command.bdist_wheel", "wheel"):
        try:
            importlib.import_module(module)
            return True
        except ImportError:
            pass
    return False


def test_requirements_already_installed_are_not_reinstalled() -> None:
    install, satisfied = split_requirements(
        "# a comment\napache-beam>=2.0  # the SDK\n\npsutil\nnot-installed-pkg==1.0\n"
        "--find-links somewhere\nfoo; python_version < '3'\n")
    assert install == ["not-installed-pkg==1.0", "--find-links somewhere"]
    assert [s.split("==")[0] for s in satisfied[:2]] == ["apache-beam", "psutil"]
    assert "marker" in satisfied[2]


def test_files_requirements_and_extra_packages_reach_the_worker(tmp_path: Path) -> None:
    client = tmp_path / "client"
    client.mkdir()
    cached = make_wheel(client, "cachedpkg", "1.0", "VALUE = 'from requirements'\n")
    extra = make_wheel(client, "extrapkg", "0.3", "VALUE = 'from extra_package'\n")
    (client / "requirements.txt").write_text("psutil\ncachedpkg==1.0\n")
    (client / "extra_packages.txt").write_text(extra.name + "\n")
    env = environment(
        staged_file(client / "requirements.txt", "requirements.txt"),
        staged_file(cached, cached.name),            # Beam's requirements cache
        staged_file(client / "extra_packages.txt", "extra_packages.txt"),
        staged_file(extra, extra.name),
        embedded(b"session", "pickled_main_session"))
    stager = EnvironmentStager(str(tmp_path / "workers"))

    staged = stager.prepare("env", env)

    assert staged is not None
    assert stager.prepare("other-env-same-deps", env) is staged   # prepared once
    worker_env = staged.env()
    staged_dir = Path(worker_env["SEMI_PERSISTENT_DIRECTORY"]) / "staged"
    assert (staged_dir / "pickled_main_session").read_bytes() == b"session"
    assert (staged_dir / "requirements.txt").exists()
    assert imports_in_worker(worker_env, "import cachedpkg, extrapkg; "
                             "print(cachedpkg.VALUE + '|' + extrapkg.VALUE)") \
        == "from requirements|from extra_package"
    # psutil came from the runner's own installation, not the site folder.
    assert not list(Path(worker_env["PYTHONPATH"]).glob("psutil*"))


def test_no_dependencies_nothing_to_do(tmp_path: Path) -> None:
    assert EnvironmentStager(str(tmp_path)).prepare("env", environment()) is None


def test_requirement_not_staged_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("surely-not-installed-pkg==9.9\n")
    env = environment(staged_file(tmp_path / "requirements.txt", "requirements.txt"))
    with pytest.raises(StagingError) as info:
        EnvironmentStager(str(tmp_path / "workers")).prepare("env", env)
    message = str(info.value)
    assert "pip install of requirements file='requirements.txt'" in message
    assert "surely-not-installed-pkg" in message
    assert str(pickle.loads(pickle.dumps(info.value))) == message


def test_missing_staged_file_and_bad_names(tmp_path: Path) -> None:
    stager = EnvironmentStager(str(tmp_path / "workers"))
    with pytest.raises(StagingError, match="does not exist on this host"):
        stager.prepare("env", environment(staged_file(tmp_path / "gone.whl", "gone.whl")))
    with pytest.raises(StagingError, match="plain file name"):
        stager.prepare("env", environment(embedded(b"x", "../escape.txt")))
    (tmp_path / "extra_packages.txt").write_text("unstaged.whl\n")
    with pytest.raises(StagingError, match="did not stage it"):
        stager.prepare("env", environment(
            staged_file(tmp_path / "extra_packages.txt", "extra_packages.txt")))


def test_setup_file_tarball_is_installed(tmp_path: Path) -> None:
    """--setup_file: the client stages an sdist as workflow.tar.gz."""
    if not can_build_wheels_offline():
        pytest.skip("building an sdist offline (no build isolation) needs setuptools "
                    ">= 70.1 or the wheel package in the runner's environment")
    source = tmp_path / "setuppkg-0.2"
    source.mkdir()
    (source / "setup.py").write_text(
        "from setuptools import setup\n"
        "setup(name='setuppkg', version='0.2', py_modules=['setuppkg'])\n")
    (source / "setuppkg.py").write_text("VALUE = 'from setup_file'\n")
    tarball = tmp_path / "workflow.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(source, arcname=source.name)
    staged = EnvironmentStager(str(tmp_path / "workers")).prepare(
        "env", environment(staged_file(tarball, "workflow.tar.gz")))
    assert staged is not None
    assert imports_in_worker(staged.env(), "import setuppkg; print(setuppkg.VALUE)") \
        == "from setup_file"
