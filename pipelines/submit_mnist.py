"""Submit the streaming MNIST pipeline to a running job server.

    beam-gpu-runner job-server --port 8099 &
    python -m beam_gpu_runner.pipelines.submit_mnist --job_endpoint=localhost:8099 \
        [--environment_type=LOOPBACK] [mnist_streaming flags, e.g. --num_images=2000 --rate=0]

This is Beam's portable submission: ``--runner=PortableRunner
--job_endpoint=HOST:PORT``. Every other argument goes to
``python -m beam_gpu_runner.pipelines.mnist_streaming`` unchanged (see its
``--help``), so this example depends only on that module's command line.
Unless given, ``--job_name=mnist-streaming`` names the job on the server
(Beam's Python client sends no name of its own). Beside the pipeline's window
lines and summary, the console shows the job's states as Beam's client logs
them (``Job state changed to RUNNING``); ``--log_level=info`` shows more.
With ``--environment_type=LOOPBACK`` (the default here) unhinted user code
runs in this process; the GPU-hinted classification stage runs on the job
server's own GPU workers.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from beam_gpu_runner.pipelines import console

_LOG = logging.getLogger(__name__)

PIPELINE_MODULE = "beam_gpu_runner.pipelines.mnist_streaming"
PORTABLE_RUNNER_LOGGER = "apache_beam.runners.portability.portable_runner"


def portable_argv(argv: Sequence[str]) -> list[str]:
    """The pipeline's argv (without argv[0]) for submission to a job server."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--job_endpoint", default="localhost:8099")
    parser.add_argument("--environment_type", default="LOOPBACK")
    known, rest = parser.parse_known_args(list(argv))
    if any(a == "--runner" or a.startswith("--runner=") for a in rest):
        raise SystemExit("submit_mnist: --runner is always PortableRunner here; "
                         "drop --runner from %s" % " ".join(rest))
    return ["--runner=PortableRunner", "--job_endpoint=%s" % known.job_endpoint,
            "--environment_type=%s" % known.environment_type, *rest]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Submit; the pipeline module's ``main`` handles Ctrl-C and SIGTERM."""
    args = list(sys.argv if argv is None else argv)
    console.quiet_imports()   # the pipeline module configures the console
    pipeline_argv = [args[0] if args else "submit_mnist", *portable_argv(args[1:])]
    if not any(a == "--job_name" or a.startswith("--job_name=") for a in pipeline_argv):
        pipeline_argv.append("--job_name=mnist-streaming")
    # The job's states, as Beam's client logs them, whatever --log_level says.
    logging.getLogger(PORTABLE_RUNNER_LOGGER).setLevel(logging.INFO)
    _LOG.info("submit_mnist: %s %s", PIPELINE_MODULE, " ".join(pipeline_argv[1:]))
    # Imported lazily: the example only needs the module's documented main().
    importlib.import_module(PIPELINE_MODULE).main(pipeline_argv)


if __name__ == "__main__":
    main()
