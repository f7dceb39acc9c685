"""Artifact staging: the files and requirements a client stages for its job.

Clients (``PortableRunner``) offer each environment's dependencies over Beam's
``ArtifactStagingService`` (reverse retrieval) between Prepare and Run. Every
file lands under ``<staging_root>/<job_id>/``. At Run the job's pipeline
environments are rewritten to point at those local files (``FILE`` artifacts
with their original roles, e.g. ``beam:artifact:role:staging_to:v1`` with the
staged name ``requirements.txt`` or a wheel), so that whatever starts the
workers serves or installs them from there. ``staged_files`` lists them for an
executor that installs requirements itself; GpuRunner's own workers get them
through ``beam_gpu_runner.workers.staging`` (prepared in ``<job folder>/workers``).
A job's folder is removed when the job ends (``keep_staged`` keeps it).
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Mapping, MutableMapping, Optional

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability import artifact_service
from apache_beam.transforms import environments

_LOG = logging.getLogger(__name__)

# Key of one dependency set: (environment id, index in its AnyOf expansion).
DependencyKey = tuple[str, int]
DependencySets = MutableMapping[DependencyKey, list[beam_runner_api_pb2.ArtifactInformation]]

# How long Run waits for a client that is still staging (PortableRunner finishes
# staging before it calls Run; this only covers the last moments of a transfer).
DEFAULT_STAGING_WAIT_S = 10.0


@dataclass(frozen=True)
class StagedFile:
    """One staged file: where it lies and what the client meant it for."""

    environment_id: str
    path: str
    role_urn: str
    staged_name: Optional[str]  # for role staging_to: e.g. requirements.txt


def dependency_sets(envs: Mapping[str, beam_runner_api_pb2.Environment]) -> DependencySets:
    """Each environment's dependencies (AnyOf environments expanded)."""
    sets: DependencySets = {}
    for env_id, env in envs.items():
        for ix, sub_env in enumerate(environments.expand_anyof_environments(env)):
            sets[(env_id, ix)] = list(sub_env.dependencies)
    return sets


def update_dependencies(envs: MutableMapping[str, beam_runner_api_pb2.Environment],
                        resolved: Mapping[DependencyKey,
                                          list[beam_runner_api_pb2.ArtifactInformation]]
                        ) -> None:
    """Point each environment's dependencies at the resolved (staged) files."""
    for env_id, env in envs.items():
        new_envs = []
        for ix, sub_env in enumerate(environments.expand_anyof_environments(env)):
            del sub_env.dependencies[:]
            sub_env.dependencies.extend(resolved.get((env_id, ix), []))
            new_envs.append(sub_env)
        if len(new_envs) == 1:
            envs[env_id].CopyFrom(new_envs[0])
        else:
            envs[env_id].CopyFrom(environments.AnyOfEnvironment.create_proto(new_envs))


def staged_files(pipeline: beam_runner_api_pb2.Pipeline) -> list[StagedFile]:
    """The FILE dependencies of every environment of ``pipeline``."""
    files = []
    for env_id, env in pipeline.components.environments.items():
        for sub_env in environments.expand_anyof_environments(env):
            for dep in sub_env.dependencies:
                if dep.type_urn != common_urns.artifact_types.FILE.urn:
                    continue
                path = beam_runner_api_pb2.ArtifactFilePayload.FromString(
                    dep.type_payload).path
                staged_name = None
                if dep.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
                    staged_name = beam_runner_api_pb2.ArtifactStagingToRolePayload \
                        .FromString(dep.role_payload).staged_name
                files.append(StagedFile(env_id, path, dep.role_urn, staged_name))
    return files


class ArtifactStore:
    """Per-job staging folders and the gRPC staging service that fills them."""

    def __init__(self, staging_root: Optional[str] = None, keep_staged: bool = False) -> None:
        self._owns_root = staging_root is None
        #: Keep each job's staged files after it ends (for debugging).
        self.keep_staged = keep_staged
        self.root = staging_root or tempfile.mkdtemp(prefix="beam-gpu-runner-staging-")
        os.makedirs(self.root, exist_ok=True)
        self.service = artifact_service.ArtifactStagingService(self._file_writer)

    def _file_writer(self, name: str, unused_hint: Optional[str] = None
                     ) -> tuple[BinaryIO, str]:
        # Beam's staging service names files "<staging token>/<sha>-<name>";
        # the staging token is the job id, so each job gets its own folder.
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, "wb"), path

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)

    def register(self, job_id: str, pipeline: beam_runner_api_pb2.Pipeline) -> None:
        """Expect the client to stage ``pipeline``'s dependencies for ``job_id``."""
        self.service.register_job(
            staging_token=job_id,
            dependency_sets=dependency_sets(pipeline.components.environments))

    def resolve(self, job_id: str, pipeline: beam_runner_api_pb2.Pipeline,
                wait_s: float = DEFAULT_STAGING_WAIT_S) -> Optional[str]:
        """Rewrite ``pipeline``'s dependencies to the files staged for ``job_id``.

        Returns the job's staging folder, or None when the client staged
        nothing (its dependencies are left as they were).
        """
        envs = pipeline.components.environments
        wanted = any(deps for deps in dependency_sets(envs).values())
        try:
            resolved = self.service.resolved_deps(job_id, timeout=wait_s if wanted else 0)
        except concurrent.futures.TimeoutError:
            if wanted:
                _LOG.warning(
                    "Job %s: the client staged no artifacts within %.1f s; "
                    "running with the dependencies as submitted", job_id, wait_s)
            return None
        except KeyError:
            return None  # not registered, or already resolved
        update_dependencies(envs, resolved)
        job_dir = self.job_dir(job_id)
        return job_dir if os.path.isdir(job_dir) else None

    def forget(self, job_id: str) -> None:
        """Drop a job's registration and files (a job cancelled before Run)."""
        try:
            self.service.resolved_deps(job_id, timeout=0)
        except (KeyError, concurrent.futures.TimeoutError):
            pass
        self.discard(job_id)

    def discard(self, job_id: str) -> None:
        """Remove a finished job's staged files (and what workers installed
        from them), unless the store keeps them (``keep_staged``)."""
        if self.keep_staged:
            return
        job_dir = self.job_dir(job_id)
        if os.path.isdir(job_dir):
            shutil.rmtree(job_dir, ignore_errors=True)
            _LOG.debug("Removed the staged files of job %s", job_id)

    def close(self) -> None:
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
