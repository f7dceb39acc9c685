"""The ``beam-gpu-runner`` command.

Each subcommand lives beside the layer it drives and is imported lazily, so the
CLI stays a thin table: ``NAME -> "module:function"``; the function takes the
remaining argv and returns an exit code.
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Callable, Optional, Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "job-server": ("beam_gpu_runner.jobservice.main:main",
                   "run a Beam Job API server (PortableRunner --job_endpoint)"),
    "jobs": ("beam_gpu_runner.jobservice.client:jobs_main",
             "list a job server's jobs: id, name, state (--job_endpoint HOST:PORT)"),
    "drain": ("beam_gpu_runner.jobservice.client:drain_main",
              "drain a job of a job server by id (sources stop, windows fire)"),
    "resources": ("beam_gpu_runner.resources.commands:resources_main",
                  "list discovered external resources and current leases"),
    "plan": ("beam_gpu_runner.runner:plan_main",
             "print per-stage resource plans and Flink/k8s/YARN equivalents"),
    "run": ("beam_gpu_runner.runner:run_main",
            "run a pipeline module or script on GpuRunner"),
}


def _usage() -> str:
    lines = ["usage: beam-gpu-runner COMMAND [ARGS...]", "", "commands:"]
    for name, (_, help_text) in SUBCOMMANDS.items():
        lines.append("  %-12s %s" % (name, help_text))
    return "\n".join(lines)


def _load(target: str) -> Callable[[Sequence[str]], int]:
    module_name, func_name = target.split(":")
    func: Callable[[Sequence[str]], int] = getattr(
        importlib.import_module(module_name), func_name)
    return func


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print("beam-gpu-runner: unknown command %r\n\n%s" % (name, _usage()),
              file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _load(SUBCOMMANDS[name][0])(rest)


if __name__ == "__main__":
    sys.exit(main())
