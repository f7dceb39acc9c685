"""beam-gpu-runner: Apache Beam pipelines on GPUs.

``GpuRunner`` is imported lazily so that ``import beam_gpu_runner`` inside a
worker (for ``runtime_context()``) stays cheap.
"""
from typing import Any

from beam_gpu_runner.resources.runtime_context import RuntimeContext, runtime_context

__all__ = ["GpuRunner", "GpuRunnerOptions", "RuntimeContext", "runtime_context"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "GpuRunner":
        from beam_gpu_runner.runner import GpuRunner
        return GpuRunner
    if name == "GpuRunnerOptions":
        from beam_gpu_runner.options import GpuRunnerOptions
        return GpuRunnerOptions
    raise AttributeError("module 'beam_gpu_runner' has no attribute %r" % name)
