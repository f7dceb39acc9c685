"""A job's staged artifacts, made usable by the SDK harnesses the runner starts.

A client (``PortableRunner``) stages each environment's dependencies with the
job server, which rewrites them into ``FILE`` artifacts under the job's staging
folder and hands that folder to GpuRunner as
``ExtendedProvisionInfo.artifact_staging_dir``. Beam's SDK harness
(``sdk_worker_main``) looks for them in ``$SEMI_PERSISTENT_DIRECTORY/staged``:
it puts that folder on ``sys.path`` and loads ``pickled_main_session`` from it
(``--save_main_session``). Beam's container boot program installs the rest
before it starts the harness; ``EnvironmentStager`` does the same, once per job
and per set of dependencies, without a container:

* every artifact is linked (or copied) to ``<dir>/staged/<staged name>``;
* ``requirements.txt`` (``--requirements_file``) and ``--pypi`` requirement
  files: a requirement the runner's own interpreter already satisfies (same
  name, version within the specifier) is taken from there; the rest are
  installed with ``pip install --no-deps --no-index --find-links <staged>
  --target <dir>/site``, i.e. from the packages the client staged (Beam's
  requirements cache), never from the network;
* the packages listed in ``extra_packages.txt`` (``--extra_package``), then
  ``workflow.tar.gz`` (``--setup_file``), likewise into ``<dir>/site``;
* a staged Beam SDK (``--sdk_location``) is not installed: workers run the
  runner's own Beam.

Source packages (sdists, ``workflow.tar.gz``) are built without build
isolation, so the runner's environment needs their build backend (for
setuptools: setuptools >= 70.1, or the ``wheel`` package).

Workers then get ``SEMI_PERSISTENT_DIRECTORY=<dir>`` and ``<dir>/site`` on
their ``PYTHONPATH`` (``StagedEnvironment.env``).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

_LOG = logging.getLogger(__name__)

#: Where sdk_worker_main looks for staged files, under SEMI_PERSISTENT_DIRECTORY.
STAGED_DIR = "staged"
#: The per-job install target added to the workers' PYTHONPATH.
SITE_DIR = "site"

REQUIREMENTS_FILE = "requirements.txt"
EXTRA_PACKAGES_FILE = "extra_packages.txt"
WORKFLOW_TARBALL_FILE = "workflow.tar.gz"
#: Names under which a client stages a Beam SDK (``--sdk_location``).
_SDK_FILE = "dataflow_python_sdk.tar"
_SDK_WHEEL_PREFIXES = ("apache_beam-", "apache-beam-")

#: Bound on one pip run (a large sdist build may take a while).
DEFAULT_PIP_TIMEOUT_S = 600.0


class StagingError(RuntimeError):
    """A staged artifact could not be made usable by the workers."""

    def __init__(self, operation: str, key: str, value: object, reason: str) -> None:
        super().__init__(operation, key, value, reason)
        self.operation = operation
        self.key = key
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        return "staging for workers: %s of %s=%r failed: %s" % (
            self.operation, self.key, self.value, self.reason)


@dataclass(frozen=True)
class StagedEnvironment:
    """What a worker needs to see one environment's staged artifacts."""

    semi_persistent_dir: str
    python_path: tuple[str, ...] = ()

    @property
    def staged_dir(self) -> str:
        return os.path.join(self.semi_persistent_dir, STAGED_DIR)

    def env(self) -> dict[str, str]:
        """Environment variables for the worker process."""
        env = {"SEMI_PERSISTENT_DIRECTORY": self.semi_persistent_dir}
        if self.python_path:
            env["PYTHONPATH"] = os.pathsep.join(self.python_path)
        return env


def _staged_name(artifact: beam_runner_api_pb2.ArtifactInformation, position: int) -> str:
    if artifact.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
        name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
            artifact.role_payload).staged_name
        if not name or os.path.basename(name) != name or name in (".", ".."):
            raise StagingError("name", "staged_name", name,
                               "a staged name must be a plain file name")
        return str(name)
    if artifact.role_urn == common_urns.artifact_roles.PIP_REQUIREMENTS_FILE.urn:
        return "pip-requirements-%d.txt" % position
    raise StagingError("name", "role_urn", artifact.role_urn,
                       "only the staging_to and pip_requirements_file roles are "
                       "supported")


def _materialize(artifact: beam_runner_api_pb2.ArtifactInformation, dest: str) -> None:
    if artifact.type_urn == common_urns.artifact_types.FILE.urn:
        source = beam_runner_api_pb2.ArtifactFilePayload.FromString(
            artifact.type_payload).path
        if not os.path.isfile(source):
            raise StagingError("link", "file", source,
                               "the staged file does not exist on this host")
        try:
            os.link(source, dest)
        except OSError:
            shutil.copyfile(source, dest)
    elif artifact.type_urn == common_urns.artifact_types.EMBEDDED.urn:
        data = beam_runner_api_pb2.EmbeddedFilePayload.FromString(artifact.type_payload).data
        with open(dest, "wb") as f:
            f.write(data)
    else:
        raise StagingError("materialize", "type_urn", artifact.type_urn,
                           "only FILE and EMBEDDED artifacts can be staged for "
                           "workers (the job server resolves the others)")


def installed_version(name: str) -> Optional[str]:
    """The version of distribution ``name`` in this interpreter, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def satisfied_by_runner(line: str) -> Optional[str]:
    """``name==version`` when this interpreter already satisfies requirement
    ``line`` (or its marker excludes this interpreter); else None."""
    from packaging.requirements import InvalidRequirement, Requirement
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return None   # a path, URL or pip option: leave it to pip
    if req.url:
        return None
    if req.marker is not None and not req.marker.evaluate():
        return "%s (marker %s excludes this interpreter)" % (req.name, req.marker)
    version = installed_version(req.name)
    if version is None or not req.specifier.contains(version, prereleases=True):
        return None
    return "%s==%s" % (req.name, version)


def split_requirements(text: str) -> tuple[list[str], list[str]]:
    """(lines pip must install, requirements the runner already satisfies)."""
    to_install: list[str] = []
    satisfied: list[str] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        found = None if line.startswith("-") else satisfied_by_runner(line)
        if found is None:
            to_install.append(line)
        else:
            satisfied.append(found)
    return to_install, satisfied


class EnvironmentStager:
    """Prepares the staged artifacts of a job's environments under ``root``.

    Thread-safe; each distinct dependency set is prepared once, by the first
    worker that needs it, and shared by the job's later workers.
    """

    def __init__(self, root: str,
                 pip_command: Sequence[str] = (sys.executable, "-m", "pip"),
                 pip_timeout_s: float = DEFAULT_PIP_TIMEOUT_S) -> None:
        self.root = root
        self._pip = list(pip_command)
        self._pip_timeout_s = pip_timeout_s
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._prepared: dict[str, StagedEnvironment] = {}

    def prepare(self, environment_id: str,
                environment: beam_runner_api_pb2.Environment
                ) -> Optional[StagedEnvironment]:
        """The staged environment for ``environment``; None when it has no
        dependencies. Raises ``StagingError`` when they cannot be installed."""
        dependencies = list(environment.dependencies)
        if not dependencies:
            return None
        digest = hashlib.sha256(b"".join(
            d.SerializeToString(deterministic=True) for d in dependencies)).hexdigest()[:16]
        with self._lock:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            staged = self._prepared.get(digest)
            if staged is None:
                staged = self._build(environment_id, digest, dependencies)
                self._prepared[digest] = staged
            return staged

    # -- building ---------------------------------------------------------------

    def _build(self, environment_id: str, digest: str,
               dependencies: list[beam_runner_api_pb2.ArtifactInformation]
               ) -> StagedEnvironment:
        work_dir = os.path.join(self.root, "env-%s" % digest)
        staged_dir = os.path.join(work_dir, STAGED_DIR)
        site_dir = os.path.join(work_dir, SITE_DIR)
        shutil.rmtree(work_dir, ignore_errors=True)   # a half-built earlier attempt
        os.makedirs(staged_dir)
        names: list[str] = []
        for position, artifact in enumerate(dependencies):
            name = _staged_name(artifact, position)
            _materialize(artifact, os.path.join(staged_dir, name))
            names.append(name)
        _LOG.info("Environment %s: staged %d file(s) for workers in %s: %s",
                  environment_id, len(names), staged_dir, ", ".join(sorted(names)))
        requirement_files = [n for n in names if n == REQUIREMENTS_FILE
                             or n.startswith("pip-requirements-")]
        for name in requirement_files:
            self._install_requirements(environment_id, staged_dir, site_dir, name)
        for package in self._extra_packages(staged_dir, names):
            self._pip_install(environment_id, staged_dir, site_dir,
                              "extra package", package, [os.path.join(staged_dir, package)])
        if WORKFLOW_TARBALL_FILE in names:
            self._pip_install(environment_id, staged_dir, site_dir, "setup package",
                              WORKFLOW_TARBALL_FILE,
                              [os.path.join(staged_dir, WORKFLOW_TARBALL_FILE)])
        for name in names:
            if name == _SDK_FILE or name.startswith(_SDK_WHEEL_PREFIXES):
                _LOG.info("Environment %s: not installing the staged Beam SDK %s; "
                          "workers run this runner's Beam", environment_id, name)
        python_path = (site_dir,) if os.path.isdir(site_dir) else ()
        return StagedEnvironment(work_dir, python_path)

    @staticmethod
    def _extra_packages(staged_dir: str, names: list[str]) -> list[str]:
        if EXTRA_PACKAGES_FILE not in names:
            return []
        with open(os.path.join(staged_dir, EXTRA_PACKAGES_FILE)) as f:
            listed = [line.strip() for line in f if line.strip()]
        for package in listed:
            if package not in names:
                raise StagingError("install", "extra package", package,
                                   "%s lists it but the client did not stage it"
                                   % EXTRA_PACKAGES_FILE)
        return listed

    def _install_requirements(self, environment_id: str, staged_dir: str,
                              site_dir: str, name: str) -> None:
        with open(os.path.join(staged_dir, name)) as f:
            to_install, satisfied = split_requirements(f.read())
        if satisfied:
            _LOG.info("Environment %s: %s: using the runner's installed %s",
                      environment_id, name, ", ".join(satisfied))
        if not any(not line.startswith("-") for line in to_install):
            return
        filtered = os.path.join(os.path.dirname(staged_dir), "to-install-" + name)
        with open(filtered, "w") as f:
            f.write("\n".join(to_install) + "\n")
        self._pip_install(environment_id, staged_dir, site_dir, "requirements file", name,
                          ["-r", filtered])

    def _pip_install(self, environment_id: str, staged_dir: str, site_dir: str,
                     what: str, name: str, args: list[str]) -> None:
        os.makedirs(site_dir, exist_ok=True)
        command = [*self._pip, "install", "--no-deps", "--no-index", "--find-links",
                   staged_dir, "--target", site_dir, "--upgrade", "--no-build-isolation",
                   "--disable-pip-version-check", "--no-input", "--quiet", *args]
        _LOG.info("Environment %s: installing %s %s for workers", environment_id, what, name)
        try:
            done = subprocess.run(command, cwd=staged_dir, capture_output=True, text=True,
                                  timeout=self._pip_timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise StagingError("pip install", what, name,
                               "pip did not finish within %.0f s" % self._pip_timeout_s) \
                from None
        except OSError as exc:
            raise StagingError("pip install", what, name,
                               "cannot run %s: %s" % (self._pip[0], exc)) from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-3000:]
            raise StagingError(
                "pip install", what, name,
                "pip exited with code %d (packages are installed offline, from the "
                "files the client staged: stage them, e.g. keep Beam's requirements "
                "cache, or install them where the runner runs):\n%s"
                % (done.returncode, output))
