"""The web UI: a live view of jobs, stages, workers and devices, JSON and
Prometheus endpoints, and the terminal progress line of a batch run.

It reads only ``beam_gpu_runner.status`` values through a ``StatusSource``
(the job server's jobs, or one GpuRunner run: ``ui.sources.serve_run``) and
never imports the runner core.
"""
from beam_gpu_runner.ui.access import AccessConfigError, AccessPolicy, access_policy
from beam_gpu_runner.ui.devices import LocalDevices
from beam_gpu_runner.ui.progress import show_progress
from beam_gpu_runner.ui.server import UiServer, UiServerError, serve

__all__ = ["AccessConfigError", "AccessPolicy", "LocalDevices", "UiServer", "UiServerError",
           "access_policy", "serve", "show_progress"]
