"""Status sources for one GpuRunner run, and the ``--ui_port`` entry point.

GpuRunner calls, in ``run_pipeline`` once the job started::

    ui = serve_run(result.status, options)    # None unless --ui_port is set
    ...
    if ui is not None: ui.stop()              # when the job has ended

The job server has its own source over all its jobs
(``beam_gpu_runner.jobservice.watch``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from beam_gpu_runner.options import GpuRunnerOptions
from beam_gpu_runner.resources.config import ExternalResourceConfig
from beam_gpu_runner.status import DeviceStatus, JobStatus
from beam_gpu_runner.ui.devices import LocalDevices
from beam_gpu_runner.ui.server import UiServer, serve

_LOG = logging.getLogger(__name__)


class SingleJobSource:
    """A StatusSource over one job (``status()``) and this host's devices."""

    def __init__(self, status: Callable[[], JobStatus],
                 devices: Optional[LocalDevices] = None) -> None:
        self._status = status
        self._devices = devices

    def job_statuses(self) -> list[JobStatus]:
        return [self._status()]

    def device_statuses(self) -> list[DeviceStatus]:
        if self._devices is None:
            return []
        return self._devices.statuses(self.job_statuses())

    def close(self) -> None:
        if self._devices is not None:
            self._devices.close()


def serve_run(status: Callable[[], JobStatus], options: Any) -> Optional[UiServer]:
    """Serve the UI of one run when ``--ui_port`` is set (else return None).

    ``options`` are the run's PipelineOptions: ``--ui_port``, ``--ui_host``,
    ``--allow_from``, ``--insecure``, and the external-resource and
    ``--lease_dir`` flags for the devices page. The URL is logged. Raises
    ``AccessConfigError`` / ``UiServerError`` (see ``serve``).
    """
    opts = options.view_as(GpuRunnerOptions)
    if opts.ui_port is None:
        return None
    devices = LocalDevices(ExternalResourceConfig.from_options(opts), opts.lease_dir)
    source = SingleJobSource(status, devices)
    try:
        return serve(source, opts.ui_host, opts.ui_port, opts.allow_from or (),
                     bool(opts.insecure), on_stop=source.close)
    except Exception:
        source.close()
        raise


__all__ = ["SingleJobSource", "serve_run"]
